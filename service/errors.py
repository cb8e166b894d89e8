"""The one error type the service raises for a client's mistake, and its JSON body.

Every error answer is `{"error": "<message>", "status": N}` with HTTP status N.
Messages name the offending field or limit; they never carry file paths or
stack traces.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the service refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 outcome: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.outcome = outcome  # what the status alone cannot say, for the metrics (service/telemetry.py)

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.headers)


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def too_large(message: str) -> ApiError:
    return ApiError(413, message)


def unprocessable(message: str) -> ApiError:
    return ApiError(422, message)


def shown(value: object, limit: int = 64) -> str:
    """A client-supplied value, quoted and cut short, safe to echo in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
