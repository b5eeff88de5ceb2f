"""Drop-in classes for code written against the common Python model-buffer
pattern, with the model living in modelbufd instead of in the process.

That pattern is a ``ModelBuffer`` per model (loaded lazily on first use, an
idle timer reset on each use, ``get_status()``, ``reset_timer()``,
``cancel_timer()``, ``unload_model()``) and a manager with
``use_model(name)``. Here each method is a call to the daemon, which keeps
the timer, the memory and the statistics::

    from modelbuf.compat import ModelBuffer

    buffer = ModelBuffer("concept", timeout=300)   # the model's keep-alive: 300 s
    model = buffer.get_model()                     # loads it if needed, resets the timer
    r = model.post("/infer", json={"input": "..."})
    buffer.get_status()   # {'is_loaded': True, 'loaded_at': ..., 'timeout_seconds': 300, ...}
    buffer.unload_model()

docs/PYTHON.md has the seed code and its modelbuf equivalent side by side.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional

from ._common import Duration, parse_time
from .client import Client, Lease, Model
from .errors import NotFound

__all__ = ["ModelBuffer", "ModelManager"]


class ModelBuffer:
    """One model kept in GPU memory only while it is used.

    Args:
        name: the model's name (or alias) in the daemon's configuration.
        timeout: seconds it stays loaded after its last use (its
            keep-alive; None: the daemon's setting for the model).
        client: a ``modelbuf.Client`` (default: a new one from
            ``MODELBUF_URL`` and ``MODELBUF_API_KEY``).
    """

    def __init__(self, name: str, timeout: Optional[float] = 300,
                 client: Optional[Client] = None) -> None:
        self.name = name
        self.timeout = timeout
        self.client = client or Client()
        self._model = self.client.model(name)

    # -- the pattern's methods ------------------------------------------
    def get_model(self) -> Model:
        """The model, loaded (or restored) if it was not, its timer reset to
        ``timeout``. Send it requests with ``.post(path, json=...)`` /
        ``.get(path)``: each goes through the daemon and resets the timer
        again."""
        self._model.load(keep_alive=self.timeout)
        return _TimedModel(self.client, self.name, self.timeout)

    load_model = get_model

    @property
    def is_loaded(self) -> bool:
        """Whether it is in GPU memory now."""
        return bool(self._model.status()["is_loaded"])

    def reset_timer(self) -> None:
        """Starts its idle timer again from now (``timeout`` seconds)."""
        self._model.keep_alive(self.timeout if self.timeout is not None
                               else self._model.status()["keep_alive_s"])

    def cancel_timer(self) -> None:
        """Stops its idle timer: it stays loaded until ``unload_model()`` or
        ``reset_timer()``."""
        self._model.keep_alive(None)

    def unload_model(self) -> None:
        """Frees it now (after requests in flight)."""
        self._model.unload()

    def get_status(self) -> Dict[str, Any]:
        """``is_loaded``; ``loaded_at`` (Unix time, None while it is not in
        memory) and ``last_accessed`` (None when never); ``timeout_seconds``
        (this buffer's timeout, else the model's keep-alive); ``timer_active``
        (whether its idle timer runs now); and the daemon's ``state``,
        ``model_location`` (GPU, CPU, UNLOADED), ``keep_alive_seconds`` (its
        effective keep-alive now, None: never) and ``idle_seconds``."""
        st = self._model.status()
        ka = st.get("timeout_seconds", st.get("keep_alive_s"))
        ka = None if ka is None or ka < 0 else ka
        loc = {"gpu": "GPU", "cpu": "CPU"}.get(st["location"], "UNLOADED")
        resident = st["state"] in ("ready", "offloading", "offloaded", "restoring")
        return {
            "is_loaded": bool(st["is_loaded"]),
            "loaded_at": parse_time(st.get("loaded_at")) if resident else None,
            "last_accessed": parse_time(st.get("last_accessed")),
            "timeout_seconds": self.timeout if self.timeout is not None else ka,
            "timer_active": bool(st["timer_active"]),
            "state": st["state"],
            "model_location": loc,
            "keep_alive_seconds": ka,
            "idle_seconds": st.get("idle_s", 0.0),
        }

    # -- as a context manager ------------------------------------------
    @contextlib.contextmanager
    def use(self, auto_unload: bool = False) -> Iterator[Lease]:
        """Holds the model for a block (``with buffer.use() as m:``): see
        ``Client.use_model``; its keep-alive afterwards is ``timeout``."""
        with self.client.use_model(self.name, auto_unload=auto_unload,
                                   keep_alive=self.timeout) as lease:
            yield lease

    def __repr__(self) -> str:
        return f"<ModelBuffer {self.name} timeout={self.timeout}>"


class _TimedModel(Model):
    """A Model whose requests carry the buffer's timeout as their keep-alive."""

    def __init__(self, client: Client, name: str, timeout: Optional[float]) -> None:
        super().__init__(client, name)
        self._timeout = timeout

    def request(self, method: str, path: str, **kw: Any) -> Any:  # type: ignore[override]
        if self._timeout is not None:
            kw.setdefault("keep_alive", self._timeout)
        return super().request(method, path, **kw)


class ModelManager:
    """Several models by name, as the pattern's manager: ``use_model(name)``
    holds one for a block, ``get_status()`` shows every one.

    Args:
        client: a ``modelbuf.Client`` (default: a new one).
        timeout: the keep-alive its buffers and uses give their model (None:
            each model's own).
    """

    def __init__(self, client: Optional[Client] = None,
                 timeout: Optional[float] = None) -> None:
        self.client = client or Client()
        self.timeout = timeout

    def buffer(self, name: str) -> ModelBuffer:
        """A ModelBuffer of one model."""
        return ModelBuffer(name, timeout=self.timeout, client=self.client)

    @contextlib.contextmanager
    def use_model(self, name: str, auto_unload: bool = False,
                  keep_alive: Optional[Duration] = None, priority: Optional[int] = None,
                  timeout: Optional[Duration] = None) -> Iterator[Lease]:
        """``with manager.use_model("concept") as model:`` -- loaded if needed,
        held for the block (never unloaded under it), released after; with
        auto_unload=True unloaded at the end. ``model.post(path, json=...)``
        calls it."""
        ka = keep_alive if keep_alive is not None else self.timeout
        with self.client.use_model(name, auto_unload=auto_unload, keep_alive=ka,
                                   priority=priority, timeout=timeout) as lease:
            yield lease

    def get_status(self) -> Dict[str, Dict[str, Any]]:
        """Every model's status, as ``ModelBuffer.get_status``, by name."""
        out: Dict[str, Dict[str, Any]] = {}
        for st in self.client.models():
            try:
                out[st["name"]] = self.buffer(st["name"]).get_status()
            except NotFound:
                continue  # removed by a reload meanwhile
        return out

    def unload_all(self) -> None:
        """Frees every loaded model."""
        for st in self.client.models():
            if st["state"] != "unloaded":
                self.client.model(st["name"]).unload()
