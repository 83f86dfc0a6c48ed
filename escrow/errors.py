"""The contract's error: one status, one snake_case code, one sentence."""

from __future__ import annotations


class ApiError(Exception):
    """A refusal rendered as `{"error": {"code", "message"}}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        """The contract's error JSON as a dict."""
        return {"error": {"code": self.code, "message": self.message}}


def invalid_request(message: str) -> ApiError:
    """422 invalid_request."""
    return ApiError(422, "invalid_request", message)


def invalid_amount(message: str) -> ApiError:
    """422 invalid_amount."""
    return ApiError(422, "invalid_amount", message)


def not_found(message: str = "No such resource.") -> ApiError:
    """404 not_found."""
    return ApiError(404, "not_found", message)
