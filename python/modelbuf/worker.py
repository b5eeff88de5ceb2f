"""Helpers that make a Python model API a good modelbuf worker.

modelbufd starts the worker, checks ``GET /health`` until it answers 200,
and, with the hooks in its configuration, asks it to move its weights to
host RAM (``POST /offload``), back (``POST /restore``) and to drop its caches
(``POST /cleanup``; after each request with ``cleanup: after_request``).
``Worker`` answers those routes for the ``torch.nn.Module`` objects it is
given, for a FastAPI app (``worker.router()``) or a plain ``http.server``
(``worker.handle(self)`` in a handler, or ``worker.serve(port)``)::

    from fastapi import FastAPI
    from modelbuf.worker import Worker, run_fastapi

    model = build_model().to("cuda")
    worker = Worker("concept")
    worker.register(model)

    app = FastAPI()
    app.include_router(worker.router())      # /health /offload /restore /cleanup

    @app.post("/infer")
    def infer(req: dict):
        with worker.inference():             # restored first if it was offloaded
            return {"out": model(...).tolist()}

    run_fastapi(app)                          # --port from the daemon's cmd, or $PORT

and in the daemon's configuration::

    concept:
      cmd: [python3, serve.py, --port, "${PORT}"]
      hooks:
        offload: {path: /offload}
        restore: {path: /restore}
        cleanup: {path: /cleanup}

Offload moves each registered module to the CPU (``module.to("cpu")``) and
empties the CUDA cache; restore moves it back to the device it came from.
On a machine without CUDA the module's tensors are copied to a separate
host copy and the originals freed (restore puts the copy back), so the same
code path runs, and is tested, without a GPU. Everything but ``router()``
and ``run_fastapi()`` is the standard library (torch is imported only when
a module is registered).
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Type, Union

__all__ = ["Worker", "Offloaded", "run_fastapi", "port_from_args", "send_json", "read_json", "send_sse",
           "send_openai_stream"]

MiB = 1024.0 * 1024.0


def _torch() -> Any:
    return sys.modules.get("torch")


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tensors(module: Any) -> Dict[str, Any]:
    """Every parameter and buffer of a module by name (tied ones once)."""
    named = dict(module.named_parameters())
    named.update(dict(module.named_buffers()))
    return named


def _module_device(module: Any) -> Any:
    for t in _tensors(module).values():
        return t.device
    torch = _torch()
    return torch.device("cpu") if torch is not None else "cpu"


class Offloaded(RuntimeError):
    """Raised by ``Worker.inference(restore=False)`` while the modules are in
    host RAM: answer 503 (the daemon restores a model before it forwards a
    request, so this means a request that did not come through it)."""


class Worker:
    """The state a worker's hooks act on: registered modules, where they are,
    and callbacks for anything else to drop or rebuild (a KV cache).

    Args:
        name: the model's name, shown by /health (the daemon passes it as
            ``${MODEL}`` in ``cmd`` if wanted).

    Thread-safe: offload, restore and cleanup take the worker's lock, and so
    does ``inference()``, so a request is never served while the weights
    move.
    """

    def __init__(self, name: str = "model") -> None:
        self.name = name
        self.location = "device"            # "device" or "host"
        self.ready = True                    # /health answers 503 while False
        self.stats = {"offloads": 0, "restores": 0, "cleanups": 0}
        self._modules: Dict[str, Any] = {}
        self._home: Dict[str, Any] = {}      # device each module is restored to
        self._host: Dict[str, Dict[str, Any]] = {}  # CPU-only: the host copies
        self._callbacks: Dict[str, List[Callable[[], Any]]] = {
            "offload": [], "restore": [], "cleanup": []}
        self._lock = threading.RLock()

    # -- what it holds --------------------------------------------------
    def register(self, module: Any, name: Optional[str] = None) -> Any:
        """Adds a ``torch.nn.Module`` (its parameters and buffers move with
        offload and restore); returns it. name defaults to "model", then
        "model1", ... Register modules where they will be served (on the
        GPU): restore brings each back to that device."""
        if not (hasattr(module, "named_parameters") and hasattr(module, "to")):
            raise TypeError("register() takes a torch.nn.Module")
        with self._lock:
            if name is None:
                name, i = "model", 1
                while name in self._modules:
                    name, i = f"model{i}", i + 1
            if name in self._modules:
                raise ValueError(f"a module called {name!r} is registered already")
            self._modules[name] = module
            self._home[name] = _module_device(module)
            if self.location == "host":
                self._move_out(name)
        return module

    @property
    def modules(self) -> Dict[str, Any]:
        """The registered modules by name."""
        return dict(self._modules)

    def on_offload(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Decorator: fn() runs after the modules moved to the host."""
        self._callbacks["offload"].append(fn)
        return fn

    def on_restore(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Decorator: fn() runs after the modules came back."""
        self._callbacks["restore"].append(fn)
        return fn

    def on_cleanup(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Decorator: fn() runs at each cleanup, before the garbage collection."""
        self._callbacks["cleanup"].append(fn)
        return fn

    # -- the moves --------------------------------------------------------
    def _move_out(self, name: str) -> None:
        torch = _torch()
        m, home = self._modules[name], self._home[name]
        if getattr(home, "type", "cpu") != "cpu":
            m.to("cpu")
            return
        # No device to leave: keep a separate host copy and free the
        # originals, so the memory is given back and taken anew on restore.
        named = _tensors(m)
        self._host[name] = {n: t.detach().clone() for n, t in named.items()}
        for t in named.values():
            t.data = torch.empty(0, dtype=t.dtype)

    def _move_in(self, name: str) -> None:
        m, home = self._modules[name], self._home[name]
        if getattr(home, "type", "cpu") != "cpu":
            m.to(home)
            return
        host = self._host.pop(name)
        for n, t in _tensors(m).items():
            t.data = host[n]

    def _empty_cache(self) -> None:
        torch = _torch()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def offload(self) -> Dict[str, Any]:
        """Moves every registered module to host RAM and empties the CUDA
        cache; nothing when it is there already. Returns the report of
        /offload (location, seconds, memory)."""
        t0 = time.perf_counter()
        with self._lock:
            if self.location != "host":
                for name in self._modules:
                    self._move_out(name)
                self.location = "host"
                for fn in self._callbacks["offload"]:
                    fn()
                gc.collect()
                self._empty_cache()
                self.stats["offloads"] += 1
            return self._report(t0)

    def restore(self) -> Dict[str, Any]:
        """Moves every registered module back to its device; nothing when it
        is there already. Returns the report of /restore."""
        t0 = time.perf_counter()
        with self._lock:
            if self.location != "device":
                for name in self._modules:
                    self._move_in(name)
                self.location = "device"
                for fn in self._callbacks["restore"]:
                    fn()
                self.stats["restores"] += 1
            return self._report(t0)

    def cleanup(self) -> Dict[str, Any]:
        """Runs the cleanup callbacks, the garbage collector and empties the
        CUDA cache. Returns the report of /cleanup (with ``collected``)."""
        t0 = time.perf_counter()
        with self._lock:
            for fn in self._callbacks["cleanup"]:
                fn()
            collected = gc.collect()
            self._empty_cache()
            self.stats["cleanups"] += 1
            out = self._report(t0)
        out["collected"] = collected
        return out

    @contextlib.contextmanager
    def inference(self, restore: bool = True) -> Iterator[None]:
        """Holds the worker for a request: no offload meanwhile. Modules that
        are offloaded are restored first (a worker used without the daemon's
        restore hook still answers), or with restore=False ``Offloaded`` is
        raised (answer 503)."""
        with self._lock:
            if self.location != "device":
                if not restore:
                    raise Offloaded(f"{self.name} is offloaded to host RAM")
                self.restore()
            yield

    # -- reports ----------------------------------------------------------
    def memory(self) -> Dict[str, Any]:
        """Memory now: ``allocated_mb`` and ``reserved_mb`` (CUDA's allocator
        when CUDA is there, else the registered modules' bytes on their
        "device"), ``rss_mb`` (the process), and the modules' bytes by tier."""
        device_b = host_b = 0
        for name, m in self._modules.items():
            live = sum(t.numel() * t.element_size() for t in _tensors(m).values())
            copy = sum(t.numel() * t.element_size() for t in self._host.get(name, {}).values())
            if self.location == "device":
                device_b += live
            else:
                host_b += live + copy
        torch = _torch()
        if torch is not None and torch.cuda.is_available():
            alloc, reserved = torch.cuda.memory_allocated(), torch.cuda.memory_reserved()
        else:
            alloc = reserved = device_b
        return {"allocated_mb": round(alloc / MiB, 3), "reserved_mb": round(reserved / MiB, 3),
                "rss_mb": round(_rss_bytes() / MiB, 3), "device_bytes": device_b,
                "host_bytes": host_b}

    def _report(self, t0: float) -> Dict[str, Any]:
        mem = self.memory()
        return {"status": "ok", "location": self.location,
                "seconds": round(time.perf_counter() - t0, 4), "memory": mem,
                "gpu_memory_allocated_mb": mem["allocated_mb"],
                "gpu_memory_reserved_mb": mem["reserved_mb"]}

    def health(self) -> Tuple[int, Dict[str, Any]]:
        """(status, document) of GET /health: 200 when ready, 503 while
        ``ready`` is False (still loading)."""
        mods = {}
        for name, m in self._modules.items():
            ts = _tensors(m)
            mods[name] = {"parameters": sum(t.numel() for t in m.parameters()),
                          "device": str(self._home[name]),
                          "bytes": sum(t.numel() * t.element_size()
                                       for t in (self._host.get(name) or ts).values())}
        doc = {"status": "healthy" if self.ready else "loading", "model": self.name,
               "location": self.location, "modules": mods, "stats": dict(self.stats),
               "memory": self.memory(), "pid": os.getpid()}
        return (200 if self.ready else 503), doc

    # -- HTTP -----------------------------------------------------------------
    def route(self, method: str, path: str) -> Optional[Tuple[int, Dict[str, Any]]]:
        """The answer of a worker route (status, document), or None when
        (method, path) is none of GET /health, POST /offload, /restore,
        /cleanup. For servers other than those below."""
        path = path.split("?", 1)[0]
        if method in ("GET", "HEAD") and path == "/health":
            return self.health()
        if method == "POST":
            fn = {"/offload": self.offload, "/restore": self.restore,
                  "/cleanup": self.cleanup}.get(path)
            if fn is not None:
                try:
                    return 200, fn()
                except Exception as e:  # reported to the daemon: its hook fails with it
                    return 500, {"status": "error", "error": f"{type(e).__name__}: {e}"}
        return None

    def handle(self, handler: BaseHTTPRequestHandler) -> bool:
        """In a ``BaseHTTPRequestHandler``'s ``do_GET``/``do_POST``: answers the
        worker's routes and returns True, else returns False (the handler
        answers the request itself)::

            def do_POST(self):
                if worker.handle(self):
                    return
                ...
        """
        out = self.route(handler.command, handler.path)
        if out is None:
            return False
        if handler.command == "POST":
            read_json(handler, required=False)  # the hook's body, if any, is read
        send_json(handler, out[0], out[1])
        return True

    def router(self, prefix: str = "") -> Any:
        """A FastAPI ``APIRouter`` with GET /health and POST /offload, /restore,
        /cleanup (``app.include_router(worker.router())``). Needs fastapi."""
        from fastapi import APIRouter
        from fastapi.responses import JSONResponse

        r = APIRouter(prefix=prefix)

        @r.get("/health")
        def health() -> Any:
            code, doc = self.health()
            return JSONResponse(doc, status_code=code)

        def hook(fn: Callable[[], Dict[str, Any]]) -> Callable[[], Any]:
            def run() -> Any:
                try:
                    return JSONResponse(fn())
                except Exception as e:
                    return JSONResponse({"status": "error", "error": f"{type(e).__name__}: {e}"},
                                        status_code=500)
            return run

        r.add_api_route("/offload", hook(self.offload), methods=["POST"])
        r.add_api_route("/restore", hook(self.restore), methods=["POST"])
        r.add_api_route("/cleanup", hook(self.cleanup), methods=["POST"])
        return r

    def serve(self, port: Optional[int] = None, handler: Optional[Type[BaseHTTPRequestHandler]]
              = None, host: str = "127.0.0.1") -> None:
        """Serves the worker's routes (and handler's, for the rest) with the
        standard library's threading HTTP server until interrupted. port
        defaults to ``port_from_args()``."""
        base = handler or BaseHTTPRequestHandler
        worker = self

        class Handler(base):  # type: ignore[valid-type, misc]
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:
                if not worker.handle(self):
                    if hasattr(base, "do_GET"):
                        base.do_GET(self)  # type: ignore[attr-defined]
                    else:
                        send_json(self, 404, {"error": "no route " + self.path})

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_POST(self) -> None:
                if not worker.handle(self):
                    if hasattr(base, "do_POST"):
                        base.do_POST(self)  # type: ignore[attr-defined]
                    else:
                        read_json(self, required=False)
                        send_json(self, 404, {"error": "no route " + self.path})

        server = ThreadingHTTPServer((host, port if port is not None else port_from_args()),
                                     Handler)
        server.daemon_threads = True
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


# -- small helpers for http.server handlers -----------------------------------

def port_from_args(argv: Optional[List[str]] = None, default: Optional[int] = None) -> int:
    """The port from ``--port N`` (or ``--port=N``) in argv, else ``$PORT``,
    else default (the daemon's ``cmd`` passes ``--port ${PORT}``)."""
    args = sys.argv[1:] if argv is None else argv
    for i, a in enumerate(args):
        if a == "--port" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--port="):
            return int(a.split("=", 1)[1])
    if os.environ.get("PORT"):
        return int(os.environ["PORT"])
    if default is None:
        raise SystemExit("no port: pass --port N (the daemon's cmd: --port \"${PORT}\")")
    return default


def send_json(handler: BaseHTTPRequestHandler, code: int, doc: Any) -> None:
    """A JSON answer with its length (the connection stays open)."""
    body = json.dumps(doc).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def read_json(handler: BaseHTTPRequestHandler, required: bool = True) -> Dict[str, Any]:
    """The request's JSON object body ({} when empty). Raises ValueError for
    a body that is not a JSON object (answer 400 with it)."""
    n = int(handler.headers.get("Content-Length") or 0)
    raw = handler.rfile.read(n) if n else b""
    if not raw:
        if required:
            raise ValueError("a JSON body is required")
        return {}
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("the body must be a JSON object")
    return doc


def send_sse(handler: BaseHTTPRequestHandler, events: Iterable[Union[str, Dict[str, Any]]],
             status: int = 200) -> None:
    """A ``text/event-stream`` answer, each item written and flushed as it
    comes (chunked, so the connection stays open): a dict is sent as
    ``data: <json>``, a string as ``data: <string>``."""
    handler.send_response(status)
    handler.send_header("Content-Type", "text/event-stream")
    handler.send_header("Cache-Control", "no-cache")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()

    def chunk(data: bytes) -> None:
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        handler.wfile.flush()

    for item in events:
        text = item if isinstance(item, str) else json.dumps(item)
        chunk(b"data: " + text.encode() + b"\n\n")
    handler.wfile.write(b"0\r\n\r\n")
    handler.wfile.flush()


def send_openai_stream(handler: BaseHTTPRequestHandler,
                       chunks: Iterable[Dict[str, Any]]) -> None:
    """An OpenAI stream: each chunk as ``data: {...}``, then ``data: [DONE]``."""
    def with_done() -> Iterator[Union[str, Dict[str, Any]]]:
        yield from chunks
        yield "[DONE]"
    send_sse(handler, with_done())


def run_fastapi(app: Any, port: Optional[int] = None, host: str = "127.0.0.1",
                log_level: str = "warning") -> None:
    """Runs a FastAPI app with uvicorn on port (default ``port_from_args()``)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port if port is not None else port_from_args(),
                log_level=log_level)
