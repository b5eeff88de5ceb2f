"""Exceptions of the modelbuf client.

Every error modelbufd answers is ``{"error": {"code": "...", "message": "..."}}``
with an HTTP status (docs/API.md). The client raises it as an exception of
the class for its code (else for its status), carrying ``status``, ``code``
and ``message``, so code can catch exactly what it handles::

    try:
        with client.use_model("whisper", timeout=5) as m:
            ...
    except modelbuf.QueueFull:
        ...  # 503: too many waiting, try later
    except modelbuf.Timeout:
        ...  # 504: no slot (or no start) in time
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "ModelbufError", "ConnectionFailed", "BadRequest", "Unauthorized", "NotFound",
    "MethodNotAllowed", "Conflict", "StateConflict", "NotSupported", "LeaseLost",
    "TooLarge", "Canceled", "WorkerFailed", "LoadFailed", "ModelLost", "Unavailable",
    "QueueFull", "CannotFit", "ShuttingDown", "Timeout", "error_from",
]


class ModelbufError(Exception):
    """An error answered by modelbufd (or met on the way to it).

    Attributes:
        status: the HTTP status (0 when there was no answer).
        code: the daemon's error code (``"queue_full"``, ``"not_found"``, ...).
        message: the daemon's message.
        body: the whole decoded answer, when there was one.
        retry_after: seconds from ``Retry-After`` (503), else None.
    """

    def __init__(self, message: str, *, status: int = 0, code: str = "",
                 body: Any = None, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.body = body
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status:
            return f"{self.code or 'error'} (HTTP {self.status}): {self.message}"
        return self.message


class ConnectionFailed(ModelbufError):
    """modelbufd could not be reached (not running, wrong URL, connection cut)."""


class BadRequest(ModelbufError):
    """400: the request was malformed or a value out of range (the message names it)."""


class Unauthorized(ModelbufError):
    """401: a missing or wrong API key (``api_key=`` or ``MODELBUF_API_KEY``)."""


class NotFound(ModelbufError):
    """404: unknown model, lease or route."""


class MethodNotAllowed(ModelbufError):
    """405: the route exists, not for this method."""


class Conflict(ModelbufError):
    """409: the model's state does not allow the action."""


class StateConflict(Conflict):
    """409 ``state_conflict``: e.g. offload of a model that is not loaded."""


class NotSupported(Conflict):
    """409 ``not_supported``: e.g. offload of a model that cannot offload."""


class LeaseLost(ModelbufError):
    """410 ``lease_lost``: the model was lost (its worker died) while the lease
    was held, or the lease expired (``lease_expired``): the work done under it
    ran on a model that may be gone. Acquire again."""


class TooLarge(ModelbufError):
    """413: the request body is over the daemon's ``max_body_size``."""


class Canceled(ModelbufError):
    """499 ``canceled``: the load waited for was canceled by an unload."""


class WorkerFailed(ModelbufError):
    """502 ``worker_failed``: the worker failed while serving the request."""


class LoadFailed(WorkerFailed):
    """502 ``load_failed``: the model could not be loaded (the message has the
    worker's last output)."""


class ModelLost(WorkerFailed):
    """502 ``model_lost``: the model failed after too many losses."""


class Unavailable(ModelbufError):
    """503: the daemon cannot take the request now (``retry_after`` says when)."""


class QueueFull(Unavailable):
    """503 ``queue_full``: more requests wait for the model than its ``max_queue``."""


class CannotFit(Unavailable):
    """503 ``cannot_fit``: the model can never fit its device."""


class ShuttingDown(Unavailable):
    """503 ``shutting_down``: the daemon is stopping."""


class Timeout(ModelbufError):
    """504 ``timeout``: no slot, start or answer in time (the message names the limit)."""


_BY_CODE: Dict[str, Type[ModelbufError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "not_found": NotFound,
    "model_not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "state_conflict": StateConflict,
    "busy": StateConflict,
    "not_supported": NotSupported,
    "lease_lost": LeaseLost,
    "lease_expired": LeaseLost,
    "too_large": TooLarge,
    "canceled": Canceled,
    "worker_failed": WorkerFailed,
    "load_failed": LoadFailed,
    "model_lost": ModelLost,
    "queue_full": QueueFull,
    "cannot_fit": CannotFit,
    "shutting_down": ShuttingDown,
    "too_many_connections": Unavailable,
    "timeout": Timeout,
}

_BY_STATUS: Dict[int, Type[ModelbufError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 405: MethodNotAllowed,
    409: Conflict, 410: LeaseLost, 413: TooLarge, 499: Canceled, 502: WorkerFailed,
    503: Unavailable, 504: Timeout,
}


def error_from(status: int, doc: Any, retry_after: Optional[str] = None,
               text: str = "") -> ModelbufError:
    """The exception for an error answer: ``doc`` is its decoded JSON (or None),
    ``text`` its raw text when it was not JSON."""
    code, message = "", ""
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or err.get("type") or "")
            message = str(err.get("message") or "")
        elif isinstance(err, str):
            message = err
        if not message and isinstance(doc.get("message"), str):
            message = doc["message"]
    if not message:
        message = text.strip()[:500] or f"HTTP {status}"
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status) or ModelbufError
    ra: Optional[float] = None
    if retry_after:
        try:
            ra = float(retry_after)
        except ValueError:
            ra = None
    return cls(message, status=status, code=code, body=doc, retry_after=ra)
