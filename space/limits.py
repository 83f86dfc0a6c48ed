"""What one request may hold, refused before any route reads it (issue 6).

Gradio keeps the last inputs of every session in memory (for deep links), up to
``state_session_capacity`` sessions (10,000 by default), and every raw HTTP API call is a new
session: unbounded, a 1 MB text stayed 1 MB, and 1 MB of JSON such as [[],[],...] stayed
25 MB, per call. So a Space bounds what one request may hold and how many sessions stay.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """The largest request body, the most JSON values in it, and how many sessions Gradio keeps."""

    #: The largest request body read (413 above it).
    max_bytes: int = 256 * 1024
    #: The most JSON values (strings, numbers, lists, objects...) a body may hold (422 above it):
    #: "[]" is 2 bytes of JSON but 56 bytes of memory. A Space's inputs are usually a few values.
    max_json_values: int = 1_000
    #: Sessions whose inputs Gradio keeps: about 50 KB each plus their inputs (at most max_bytes
    #: and max_json_values values); a browser's sandbox wallet state lasts until this many newer
    #: sessions have come.
    session_capacity: int = 1_000
    #: What the Space takes, named in the 413 message, e.g. "texts of up to 20,000 characters".
    accepts: str = ""

    @classmethod
    def for_text(cls, max_chars: int, **others: int) -> Limits:
        """Room for a text of `max_chars` characters even as 12-byte JSON escapes ("\\ud83d\\ude00"), plus 16 KiB."""
        return cls(max_bytes=12 * max_chars + 16 * 1024, accepts=f"texts of up to {max_chars:,} characters", **others)


class RequestLimits:
    """ASGI middleware: a body over `limits.max_bytes` is refused (413), and so is a JSON body
    holding over `limits.max_json_values` values (422), before any route reads it."""

    def __init__(self, app, limits: Limits = Limits()) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        max_bytes, max_values = self.limits.max_bytes, self.limits.max_json_values
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"0")
        accepts = f" ({self.limits.accepts})" if self.limits.accepts else ""
        too_large = f"The request is too large: this Space reads at most {max_bytes:,} bytes{accepts}. You were not charged."
        if not length.isdigit() or int(length) > max_bytes:
            await _refuse(send, 413, too_large)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > max_bytes:
                await _refuse(send, 413, too_large)
                return
        if b"json" in headers.get(b"content-type", b"") and _json_values_over(bytes(body), max_values):
            await _refuse(
                send, 422, f"The request holds over {max_values:,} JSON values; this Space takes "
                "a few strings. You were not charged."
            )
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def _json_values_over(body: bytes, limit: int) -> bool:
    """Whether `body` is JSON holding more than `limit` values (not JSON: False, the route says so)."""
    try:
        stack = [json.loads(body)]
    except RecursionError:  # nested deeper than any input of a Space
        return True
    except ValueError:
        return False
    count = 0
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return False


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
