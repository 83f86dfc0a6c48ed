"""The Seller tab: calls and revenue over time, refusals by reason, open leases, recent receipts.

Read from the gate's counters (``EscrowGate.stats()``) when the tab is selected, on its Refresh button, and
every 10 s while it is shown. In sandbox mode it is open to everyone. In production it is shown only to the
Space's owner, signed in through Hugging Face OAuth (``hf_oauth: true`` in README's front matter): the signed-in
user's name must equal ``SPACE_AUTHOR_NAME`` (set by Spaces); anyone else sees only a sign-in prompt. Its events
are private: not in the Space's API, not MCP tools.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import gradio as gr
import pandas as pd
from gradio.context import Context

from gate.money import format_usdc

log = logging.getLogger("space")

__all__ = ["SELLER_TAB", "SellerView", "can_see_seller_tab", "seller_tab"]

SELLER_TAB = "Seller"
SIGN_IN = "Sign in as the Space's owner to see its calls and revenue."
REFRESH_EVERY_S = 10
_WINDOW_MIN = 30  # the plots show at least the last half hour
_MAX_WINDOW_MIN = 24 * 60  # and at most a day (what the gate keeps)
_REFUSAL_COLUMNS = ["refusal code", "calls"]
_LOCAL_USER = "local-user"  # the profile Gradio's mocked sign-in gives off Spaces when the Hub cannot name one


def can_see_seller_tab(profile: gr.OAuthProfile | None, *, sandbox: bool, owner: str | None) -> bool:
    """Sandbox: everyone. Production: only a signed-in user named `owner` (SPACE_AUTHOR_NAME; unset: nobody)."""
    if sandbox:
        return True
    return bool(owner) and profile is not None and profile.username == owner


def _utc(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s, tz=timezone.utc).replace(tzinfo=None)


class SellerView:
    """What the Seller tab shows, from a stats snapshot; ``refresh(profile)`` is its handler's body."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]], *, sandbox: bool, owner: str | None,
                 now: Callable[[], float] = time.time) -> None:
        self._stats = stats
        self.sandbox = sandbox
        self.owner = owner
        self._now = now

    def refresh(self, profile: gr.OAuthProfile | None) -> tuple[Any, ...]:
        """Updates for (sign-in note, content column, summary, calls plot, USDC plot, refusals, receipts).
        Someone who may not see the tab gets the sign-in note and empty content, never the data."""
        if not can_see_seller_tab(profile, sandbox=self.sandbox, owner=self.owner):
            who = f" (signed in as `{profile.username}`)" if profile is not None else ""
            return (gr.update(value=SIGN_IN + who, visible=True), gr.update(visible=False), "",
                    self._per_minute([]), self._per_minute([]), self._refusals({}), self._receipts([]))
        stats = self._stats()
        per_minute = self._per_minute(stats["per_minute"])
        return (gr.update(visible=False), gr.update(visible=True), self.summary(stats), per_minute, per_minute,
                self._refusals(stats["refusals"]), self._receipts(stats["recent"]))

    @staticmethod
    def summary(stats: Mapping[str, Any]) -> str:
        calls = stats["calls"]
        unpaid = ", ".join(f"{calls[o]} {o}" for o in ("failed", "withheld", "cancelled", "empty") if calls.get(o))
        lines = [
            f"**{calls['paid']} paid calls**, **{format_usdc(stats['charged_usdc'])} USDC** charged, "
            f"{format_usdc(stats['captured_usdc'])} USDC captured by the escrow service so far.",
            f"{calls['refused']} calls refused before they ran (not charged)"
            + (f"; not charged either: {unpaid}." if unpaid else "."),
            f"Open leases: **{stats['open_leases']}**, owing {format_usdc(stats['owed_usdc'])} USDC not captured yet "
            "(captured every few seconds, and when the Space stops).",
        ]
        if calls.get("abandoned"):
            lines.append(f"{calls['abandoned']} streams stopped by their client, charged for what they received.")
        return "\n\n".join(lines)

    def _per_minute(self, rows: list[Mapping[str, Any]]) -> pd.DataFrame:
        """Calls and USDC per minute (UTC), every minute of the window (zeros where none): at least the last half
        hour, back to the first recorded minute, at most a day. USDC as float: for the plot only."""
        now_min = int(self._now() // 60)
        first = min([int(r["minute"] // 60) for r in rows], default=now_min)
        start = max(min(first, now_min - _WINDOW_MIN + 1), now_min - _MAX_WINDOW_MIN + 1)
        by_minute = {int(r["minute"] // 60): r for r in rows}
        minutes = range(start, max(now_min, *by_minute, start) + 1)
        return pd.DataFrame({
            "minute": [_utc(m * 60) for m in minutes],
            "calls": [int(by_minute[m]["calls"]) if m in by_minute else 0 for m in minutes],
            "USDC": [float(by_minute[m]["charged_usdc"]) if m in by_minute else 0.0 for m in minutes],
        })

    @staticmethod
    def _refusals(refusals: Mapping[str, int]) -> pd.DataFrame:
        ranked = sorted(refusals.items(), key=lambda item: (-item[1], item[0]))
        return pd.DataFrame(ranked, columns=_REFUSAL_COLUMNS)

    @staticmethod
    def _receipts(recent: list[Mapping[str, Any]]) -> pd.DataFrame:
        """Newest first: when (UTC), then the receipt's fields as the buyer got them."""
        columns = ["time (UTC)"]
        for receipt in recent:
            columns += [key for key in receipt if key != "at" and key not in columns]
        rows = []
        for receipt in reversed(recent):
            row = {"time (UTC)": _utc(receipt["at"]).strftime("%Y-%m-%d %H:%M:%S")}
            for key, value in receipt.items():
                if key != "at":
                    row[key] = value if isinstance(value, str) else json.dumps(value, default=str)
            rows.append(row)
        return pd.DataFrame(rows, columns=columns).fillna("")


def seller_tab(stats: Callable[[], Mapping[str, Any]], *, sandbox: bool, env: Mapping[str, str] | None = None) -> None:
    """The Seller tab, inside the page's ``gr.Tabs``. In production it needs Hugging Face OAuth: on a Space
    without it (no ``hf_oauth: true``) the tab is left out, with a log line saying why."""
    env = os.environ if env is None else env
    owner = env.get("SPACE_AUTHOR_NAME", "").strip() or None
    if not sandbox and not _sign_in_available(env):
        return
    view = SellerView(stats, sandbox=sandbox, owner=owner)
    tabs = Context.block if isinstance(Context.block, gr.Tabs) else None
    with gr.Tab(SELLER_TAB, id="seller") as tab:
        if sandbox:
            gr.Markdown("**Sandbox mode:** this tab is open to everyone. In production only the Space's owner "
                        "sees it, after signing in with Hugging Face.")
        else:
            gr.LoginButton(elem_id="seller-login")
        sign_in = gr.Markdown(SIGN_IN, visible=not sandbox, elem_id="seller-sign-in")
        with gr.Column(visible=sandbox) as content:
            summary = gr.Markdown(elem_id="seller-summary")
            with gr.Row():
                calls_plot = gr.LinePlot(x="minute", y="calls", title="Paid calls per minute (UTC)",
                                         elem_id="seller-calls")
                usdc_plot = gr.LinePlot(x="minute", y="USDC", title="USDC charged per minute (UTC)",
                                        elem_id="seller-usdc")
            refusals = gr.Dataframe(headers=_REFUSAL_COLUMNS, label="Refusals by reason (not charged)",
                                    interactive=False, elem_id="seller-refusals")
            receipts = gr.Dataframe(label="Recent receipts (newest first)", interactive=False,
                                    elem_id="seller-receipts")
        refresh_button = gr.Button("Refresh", size="sm", elem_id="seller-refresh")
        timer = gr.Timer(REFRESH_EVERY_S, active=False)

    def refresh(profile: gr.OAuthProfile | None):
        return view.refresh(profile)

    outputs = [sign_in, content, summary, calls_plot, usdc_plot, refusals, receipts]
    private = {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": None}
    tab.select(refresh, None, outputs, **private)
    refresh_button.click(refresh, None, outputs, **private)
    timer.tick(refresh, None, outputs, trigger_mode="always_last", **private)
    if tabs is not None:  # the timer runs only while the Seller tab is shown

        def shown(evt: gr.SelectData) -> gr.Timer:
            return gr.Timer(active=evt.value == SELLER_TAB)

        tabs.select(shown, None, timer, **private)
    else:
        tab.select(lambda: gr.Timer(active=True), None, timer, **private)


def _sign_in_available(env: Mapping[str, str]) -> bool:
    """Whether Gradio can sign a person in: Hugging Face OAuth on a Space, else Gradio's local mock."""
    from gradio import oauth
    from gradio.utils import get_space

    if get_space() is not None:
        if oauth.OAUTH_CLIENT_ID is None:
            log.warning("Seller tab left out: this Space has no Hugging Face OAuth; add `hf_oauth: true` to the "
                        "front matter of its README.md.")
            return False
        if not env.get("SPACE_AUTHOR_NAME", "").strip():
            log.warning("Seller tab: SPACE_AUTHOR_NAME is unset, so nobody can see it.")
        return True
    _mock_sign_in_without_hub()
    if env.get("SPACE_AUTHOR_NAME", "").strip():
        log.warning("Seller tab: not on Hugging Face Spaces, so Gradio's sign-in is a local mock (anyone can sign "
                    "in as the machine's Hugging Face user, or %r); the tab is shown to SPACE_AUTHOR_NAME=%s.",
                    _LOCAL_USER, env["SPACE_AUTHOR_NAME"].strip())
    return True


def _mock_sign_in_without_hub() -> None:
    """Off Spaces Gradio mocks the sign-in with the profile of the machine's Hugging Face token, asked of the
    Hub; with no token or no network it would refuse to start. Then a fake local profile (``local-user``).
    Its warning ("must be logged in to Huggingface") is then wrong: one log line instead."""
    from gradio import oauth

    original = oauth._get_mocked_oauth_info
    if getattr(original, "_space_fallback", False):
        return
    add_routes = oauth._add_mocked_oauth_routes

    def add_mocked_routes(app: Any) -> None:
        log.info("Not on Hugging Face Spaces: Gradio's sign-in (Seller tab) is a local mock.")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Gradio does not support OAuth features outside of a Space")
            add_routes(app)

    oauth._add_mocked_oauth_routes = add_mocked_routes

    def mocked_oauth_info() -> dict:
        try:
            return original()
        except Exception as exc:  # no token, offline, not a user token: Gradio's own errors
            log.info("Local sign-in mocked as %r (%s)", _LOCAL_USER, str(exc).split(".")[0])
            return _local_oauth_info()

    mocked_oauth_info._space_fallback = True  # type: ignore[attr-defined]
    oauth._get_mocked_oauth_info = mocked_oauth_info


def _local_oauth_info() -> dict:
    """The session Gradio's mocked login stores, for a fake local user."""
    now = int(time.time())
    return {
        "access_token": "mock-oauth-token-for-local-dev",
        "token_type": "bearer",
        "expires_in": 3600,
        "scope": "openid profile",
        "expires_at": now + 8 * 60 * 60,
        "userinfo": {
            "sub": "0" * 23,
            "name": "Local user",
            "preferred_username": _LOCAL_USER,
            "profile": f"https://huggingface.co/{_LOCAL_USER}",
            "picture": "",
        },
    }
