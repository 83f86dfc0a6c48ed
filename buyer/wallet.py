"""The buyer's account on an escrow service: its key, its escrows, and sessions with paid Spaces."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import requests

from ._http import SERVICE_TIMEOUT, _Http, _json, _never_sent, _new_key, _retry_after
from ._money import _fmt, _parse, _usdc
from .errors import EscrowServiceError

if TYPE_CHECKING:
    from .session import SpaceSession

__all__ = ["HOSTED_ESCROW_URL", "Wallet"]

#: The hosted Purple Flea escrow service, where production Spaces are paid.
HOSTED_ESCROW_URL = "https://escrow.purpleflea.com/api"
_POST_ATTEMPTS = 3  # an escrow POST is re-sent (same Idempotency-Key: applied once) after a lost answer
_MAX_WAIT_S = 10.0  # the longest Retry-After (429) a wallet waits before giving up


class Wallet:
    """A buyer's key on an escrow service (``escrow_api``: the API root); thread-safe."""

    def __init__(self, escrow_api: str, api_key: str, *, timeout: tuple[float, float] = SERVICE_TIMEOUT) -> None:
        if not isinstance(escrow_api, str) or not escrow_api.startswith(("http://", "https://")):
            raise ValueError(f"escrow_api must be an http(s) URL, e.g. {HOSTED_ESCROW_URL}, not {escrow_api!r}")
        if not isinstance(api_key, str) or not api_key.strip():
            raise ValueError("api_key must be the buyer's escrow key (pf_live_… or pf_test_…)")
        self.escrow_api = escrow_api.rstrip("/")
        self._api_key = api_key.strip()
        self._timeout = timeout
        self._http = _Http()
        self._agent_id: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"Wallet({self.escrow_api!r}, agent_id={self._agent_id!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Wallet:
        """The wallet in ``PF_BUYER_KEY``, on ``PF_BUYER_ESCROW_URL`` (else ``ESCROW_URL``, else the hosted service)."""
        env = os.environ if environ is None else environ
        key = (env.get("PF_BUYER_KEY") or "").strip()
        if not key:
            raise ValueError(
                "Wallet.from_env: PF_BUYER_KEY is not set; set it to the buyer's escrow key (pf_live_… on the "
                "hosted service), or use Wallet.sandbox(space_url) to try a sandbox Space with test USDC"
            )
        url = (env.get("PF_BUYER_ESCROW_URL") or env.get("ESCROW_URL") or "").strip() or HOSTED_ESCROW_URL
        return cls(url, key)

    @classmethod
    def sandbox(cls, space_url: str, faucet_usdc: str | int | Decimal = "1", *, name: str = "buyer") -> Wallet:
        """A throwaway buyer on a sandbox Space's escrow (``<space>/sandbox/api``) holding ``faucet_usdc`` test USDC."""
        amount = _usdc(faucet_usdc, "faucet_usdc")
        escrow_api = space_url.rstrip("/") + "/sandbox/api"
        http = _Http()
        try:
            answer = _send(http, "POST", escrow_api + "/agents", SERVICE_TIMEOUT,
                           json={"name": name}, headers={"Idempotency-Key": _new_key("agent")})
        finally:
            http.close()
        if answer.status_code == 404:
            raise EscrowServiceError(
                f"{space_url} has no sandbox escrow (no {escrow_api}/agents): it runs in production mode; "
                "use Wallet(escrow_api, api_key) or Wallet.from_env() with a real buyer key",
                code="not_found", status=404, charged=False,
            )
        body = _checked(answer, 201, "register a sandbox agent")
        wallet = cls(escrow_api, body["api_key"])
        wallet._agent_id = body.get("agent_id")
        if amount > 0:
            wallet.faucet(amount)
        return wallet

    # -- the account ------------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        """This buyer's agent ID (asked of the service once)."""
        if self._agent_id is None:
            self._agent_id = self.me()["agent_id"]
        return self._agent_id

    def me(self) -> dict[str, Any]:
        """``GET /me``: agent_id, balance_usdc (Decimal), escrows_open."""
        body = self._get("/me", "read the account")
        body["balance_usdc"] = _parse(body.get("balance_usdc"))
        return body

    def balance_usdc(self) -> Decimal:
        """The USDC this buyer holds outside escrows."""
        return self.me()["balance_usdc"]

    def faucet(self, amount_usdc: str | int | Decimal) -> Decimal:
        """Sandbox only: credit ``amount_usdc`` test USDC; the new balance."""
        body = self._post("/faucet", {"amount_usdc": _fmt(_usdc(amount_usdc, "amount_usdc"))}, "claim test USDC", 200)
        return _parse(body.get("balance_usdc"))

    # -- escrows ----------------------------------------------------------------------

    def open_escrow(
        self,
        seller_id: str,
        amount_usdc: str | int | Decimal,
        *,
        ttl_seconds: int = 3600,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Lock ``amount_usdc`` for ``seller_id`` (``POST /escrow``); the escrow object, money as Decimal."""
        body: dict[str, Any] = {
            "seller_id": seller_id,
            "amount_usdc": _fmt(_usdc(amount_usdc, "amount_usdc")),
            "ttl_seconds": int(ttl_seconds),
        }
        if description:
            body["description"] = description
        escrow = self._post("/escrow", body, "open an escrow", 201, key=idempotency_key or _new_key("escrow"))
        return _money_fields(escrow)

    def escrow(self, escrow_id: str) -> dict[str, Any]:
        """``GET /escrow/{id}``: the escrow object, money as Decimal."""
        return _money_fields(self._get(f"/escrow/{escrow_id}", f"read escrow {escrow_id}"))

    def release(self, escrow_id: str, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Close the escrow and refund what remains to this buyer (``release`` of 0 with ``refund_remainder``)."""
        body = {"amount_usdc": "0", "refund_remainder": True}
        key = idempotency_key or _new_key("release")
        released = self._post(f"/escrow/{escrow_id}/release", body, f"release escrow {escrow_id}", 200, key=key)
        return _money_fields(released)

    def space(
        self,
        url: str,
        *,
        budget_usdc: str | int | Decimal,
        max_price_usdc: str | int | Decimal | None = None,
        escrow_usdc: str | int | Decimal | None = None,
        ttl_seconds: int = 3600,
        **options: Any,
    ) -> SpaceSession:
        """A session paying the Space at ``url`` from escrows of at most ``budget_usdc`` in all (reads pricing now)."""
        from .session import SpaceSession

        return SpaceSession(
            self, url, budget_usdc=budget_usdc, max_price_usdc=max_price_usdc, escrow_usdc=escrow_usdc,
            ttl_seconds=ttl_seconds, **options,
        )

    def close(self) -> None:
        """Close this wallet's HTTP connections."""
        self._http.close()

    def __enter__(self) -> Wallet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- private ----------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"}

    def _get(self, path: str, what: str) -> dict[str, Any]:
        try:
            answer = self._http.request("GET", self.escrow_api + path, timeout=self._timeout, headers=self._auth())
        except requests.RequestException as exc:
            raise EscrowServiceError(
                f"Could not {what}: the escrow service at {self.escrow_api} did not answer ({type(exc).__name__}).",
                code="service_unavailable", charged=False,
            ) from exc
        return _checked(answer, 200, what)

    def _post(self, path: str, body: dict, what: str, ok: int, *, key: str | None = None) -> dict[str, Any]:
        headers = {**self._auth(), "Idempotency-Key": key or _new_key("post")}
        answer = _send(self._http, "POST", self.escrow_api + path, self._timeout, json=body, headers=headers)
        return _checked(answer, ok, what)


def _send(http: _Http, method: str, url: str, timeout: Any, **kw: Any) -> requests.Response:
    """A POST to the escrow service, re-sent with the same Idempotency-Key after a lost answer, a 5xx or a 429."""
    for attempt in range(1, _POST_ATTEMPTS + 1):
        last = attempt == _POST_ATTEMPTS
        try:
            answer = http.request(method, url, timeout=timeout, **kw)
        except requests.RequestException as exc:
            if last:
                applied = False if _never_sent(exc) else None
                raise EscrowServiceError(
                    f"The escrow service at {url.split('/api', 1)[0]}… did not answer ({type(exc).__name__})"
                    + ("." if applied is False else "; the request may have been applied."),
                    code="service_unavailable", charged=applied,
                ) from exc
            time.sleep(0.2 * attempt)
            continue
        if answer.status_code >= 500 and not last:
            time.sleep(0.2 * attempt)
            continue
        if answer.status_code == 429 and not last:
            wait = _retry_after(answer, 1.0)
            if wait <= _MAX_WAIT_S:
                time.sleep(wait)
                continue
        return answer
    raise AssertionError("unreachable")


def _checked(answer: requests.Response, ok: int, what: str) -> dict[str, Any]:
    """The JSON body of a success, else an EscrowServiceError with the service's code and sentence."""
    body = _json(answer)
    if answer.status_code == ok and isinstance(body, dict):
        return body
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    raise EscrowServiceError(
        f"Could not {what}: {message or f'the escrow service answered HTTP {answer.status_code}'}",
        code=code or f"http_{answer.status_code}", status=answer.status_code,
        charged=False if 400 <= answer.status_code < 500 else None,
        retry_after=_retry_after(answer, 0.0) if answer.status_code == 429 else None,
    )


def _money_fields(escrow: dict[str, Any]) -> dict[str, Any]:
    """The escrow object with every ``…_usdc`` field as a Decimal."""
    return {k: _parse(v) if k.endswith("_usdc") else v for k, v in escrow.items()}
