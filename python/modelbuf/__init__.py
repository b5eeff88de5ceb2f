"""modelbuf: the Python client of modelbufd, which keeps machine-learning
models in GPU memory only while they are used.

    import modelbuf

    client = modelbuf.Client()                      # MODELBUF_URL, MODELBUF_API_KEY
    with client.use_model("whisper") as m:          # loaded, held, renewed, released
        print(m.post("/transcribe", json={...}).json())

Also: ``modelbuf.AsyncClient`` (asyncio), ``modelbuf.compat`` (ModelBuffer and
ModelManager for code written against that pattern), ``modelbuf.worker``
(helpers that make a PyTorch API a good worker), and the exceptions of
``modelbuf.errors``. The standard library only; Python 3.9 or later.
See docs/PYTHON.md.
"""
from ._common import Event
from ._http import Response
from ._version import __version__
from .aio import AsyncClient, AsyncEventStream, AsyncLease, AsyncModel, AsyncResponse
from .client import Client, EventStream, Lease, Model, OpenAI
from .errors import (BadRequest, Canceled, CannotFit, Conflict, ConnectionFailed, LeaseLost,
                     LoadFailed, MethodNotAllowed, ModelbufError, ModelLost, NotFound,
                     NotSupported, QueueFull, ShuttingDown, StateConflict, Timeout, TooLarge,
                     Unauthorized, Unavailable, WorkerFailed)

__all__ = [
    "__version__", "Client", "Model", "Lease", "OpenAI", "Response", "Event",
    "EventStream",
    "AsyncClient", "AsyncModel", "AsyncLease", "AsyncResponse", "AsyncEventStream",
    "ModelbufError", "ConnectionFailed", "BadRequest", "Unauthorized", "NotFound",
    "MethodNotAllowed", "Conflict", "StateConflict", "NotSupported", "LeaseLost", "TooLarge",
    "Canceled", "WorkerFailed", "LoadFailed", "ModelLost", "Unavailable", "QueueFull",
    "CannotFit", "ShuttingDown", "Timeout",
]
