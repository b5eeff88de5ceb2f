"""The synchronous client of modelbufd.

    import modelbuf

    client = modelbuf.Client()                  # MODELBUF_URL, MODELBUF_API_KEY
    with client.use_model("whisper") as m:      # loaded (or restored) and held
        r = m.post("/transcribe", json={"audio": "..."})
        print(r.json())
    # released here; the daemon's keep-alive decides what happens next

Every call is an HTTP request to the daemon (docs/API.md); errors are raised
as the exceptions of ``modelbuf.errors``.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple, Union

from ._common import (DEFAULT_TTL, Duration, EventStreamBase, acquire_body, client_setup,
                      encode_body, keep_alive_value, parse_endpoint, quote_name,
                      status_headers, ttl_seconds)
from ._http import _UNSET, Response, Transport
from .errors import LeaseLost, ModelbufError, NotFound, NotSupported

__all__ = ["Client", "Model", "Lease", "OpenAI", "EventStream"]


@dataclass
class _Held:
    """A lease this context holds, for nested use_model() of the same model."""

    owner: Any                       # the Client or AsyncClient
    names: Set[str]
    lease: Any
    depth: int = 1
    auto_unload: bool = False


# The leases held by the running thread or task (each thread starts with
# none; an asyncio task starts with those of the code that created it).
_held: contextvars.ContextVar[Tuple[_Held, ...]] = contextvars.ContextVar(
    "modelbuf_held", default=())


def _find_held(owner: Any, name: str) -> Optional[_Held]:
    for h in _held.get():
        if h.owner is owner and name in h.names:
            return h
    return None


def _acquire_timeout(timeout: Optional[Duration]) -> Optional[float]:
    """How long the HTTP call of an acquire may wait: the daemon bounds the
    wait itself (queue_timeout, start_timeout, or timeout=); a little more
    than timeout when one is given."""
    if timeout is None:
        return None
    try:
        s = ttl_seconds(timeout)
    except ValueError:
        return None  # -1: no bound
    return s + 30.0


class Lease:
    """A model held over HTTP (``POST /api/models/{name}/acquire``): while it
    is held the model stays loaded; it is never offloaded, unloaded or
    evicted under it. ``use_model()`` makes one, renews it in the background
    and releases it.

    Attributes:
        model: the model's name (an alias asked for gives the name).
        id: the lease's token.
        url: the worker's own URL (``http://127.0.0.1:PORT``); empty for a
            model without a worker (tensors, plugin).
        ttl: the lease's time to live between renewals, in seconds.
    """

    def __init__(self, client: "Client", doc: Dict[str, Any], ttl: Duration) -> None:
        self._client = client
        self.model: str = doc["model"]
        self.id: str = doc["lease"]
        self.url: str = doc.get("url") or ""
        self.expires_at: Optional[str] = doc.get("expires_at")
        self._ttl = ttl
        self.ttl = ttl_seconds(ttl)
        self._lost: Optional[ModelbufError] = None
        self._released = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.renewals = 0
        self._worker: Optional[Transport] = None
        if self.url:
            self._worker = Transport(parse_endpoint(self.url), timeout=client.timeout)

    # -- requests to the worker ------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None,
                data: Union[bytes, str, None] = None, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, timeout: Any = _UNSET) -> Response:
        """A request straight to the worker (not through the daemon: the lease
        is what holds the model). Returns the Response as the worker sent it."""
        if self._worker is None:
            raise NotSupported(f"model {self.model!r} has no worker of its own (tensors or "
                               "plugin): call it through the daemon, client.model(name).get()",
                               code="not_supported")
        if not path.startswith("/"):
            path = "/" + path
        body, h = encode_body(json, data, headers)
        return self._worker.request(method, path, body=body, headers=h, stream=stream,
                                    timeout=timeout)

    def post(self, path: str, *, json: Any = None, data: Union[bytes, str, None] = None,
             headers: Optional[Dict[str, str]] = None, stream: bool = False,
             timeout: Any = _UNSET) -> Response:
        """POST path to the worker (json= for a JSON body)."""
        return self.request("POST", path, json=json, data=data, headers=headers, stream=stream,
                            timeout=timeout)

    def get(self, path: str, *, headers: Optional[Dict[str, str]] = None, stream: bool = False,
            timeout: Any = _UNSET) -> Response:
        """GET path from the worker."""
        return self.request("GET", path, headers=headers, stream=stream, timeout=timeout)

    # -- the lease --------------------------------------------------------
    @property
    def lost(self) -> Optional[ModelbufError]:
        """The error that ended the lease under its holder (the model was lost,
        or the lease expired), else None."""
        return self._lost

    def renew(self) -> None:
        """Renews the lease now for another ttl (the background renewal does it
        every ttl/3). Raises LeaseLost when the lease is gone."""
        try:
            _, doc = self._client._t.call("POST", f"/api/leases/{self.id}/renew",
                                          {"ttl": self._ttl}, timeout=self._call_timeout())
        except NotFound as e:
            raise LeaseLost("the lease expired before it was renewed: the model may have been "
                            "unloaded while it was used", status=404, code="lease_expired",
                            body=e.body) from e
        self.expires_at = doc.get("expires_at")
        self.renewals += 1

    def _call_timeout(self) -> float:
        t = self._client.timeout
        return min(t, max(self.ttl / 3.0, 1.0)) if t else max(self.ttl / 3.0, 1.0)

    def _renew_loop(self) -> None:
        interval = max(self.ttl / 3.0, 0.05)
        while not self._stop.wait(interval):
            try:
                self.renew()
            except LeaseLost as e:
                self._lost = e
                return
            except ModelbufError:
                continue  # a passing fault: the next tick tries again, before the ttl ends

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"modelbuf-lease-{self.model}")
        self._thread.start()

    def release(self) -> None:
        """Releases the lease (once; later calls do nothing). Raises LeaseLost
        when the model was lost while it was held, or the lease had expired."""
        if self._released:
            return
        self._released = True
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._client._t.call("DELETE", f"/api/leases/{self.id}")
        except NotFound as e:
            raise self._lost or LeaseLost(
                "the lease had expired: the model may have been unloaded while it was used",
                status=404, code="lease_expired", body=e.body) from e
        finally:
            if self._worker is not None:
                self._worker.close()
        if self._lost is not None:
            raise self._lost

    def __repr__(self) -> str:
        return f"<Lease {self.model} {self.url or '(no worker)'}>"


class Model:
    """A model of the daemon, by name or alias: its status, the actions on
    it, and requests to it through the daemon (each under a lease of its
    own, as ``/m/{name}/...``)."""

    def __init__(self, client: "Client", name: str) -> None:
        self.client = client
        self.name = name
        self._path = "/api/models/" + quote_name(name)

    @property
    def url(self) -> str:
        """The model's base URL through the daemon (``.../m/{name}``), for other
        HTTP clients."""
        return self.client.url + "/m/" + quote_name(self.name)

    def status(self) -> Dict[str, Any]:
        """The model's status (docs/API.md: state, location, memory, stats, ...)."""
        return self.client._t.call("GET", self._path)[1]

    def load(self, keep_alive: Optional[Duration] = None, wait: bool = True) -> Dict[str, Any]:
        """Loads (or restores) it now; keep_alive for this residency (None: the
        model's own); wait=False returns at once. Returns the new status."""
        body: Dict[str, Any] = {}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive_value(keep_alive)
        if not wait:
            body["wait"] = False
        return self.client._t.call("POST", self._path + "/load", body, timeout=None)[1]

    def offload(self) -> Dict[str, Any]:
        """Moves it to host RAM (after requests in flight). Raises NotSupported
        when it cannot offload, StateConflict when it is not loaded."""
        return self.client._t.call("POST", self._path + "/offload", {}, timeout=None)[1]

    def unload(self) -> Dict[str, Any]:
        """Frees it on every tier (after requests in flight)."""
        return self.client._t.call("POST", self._path + "/unload", {}, timeout=None)[1]

    def keep_alive(self, seconds: Optional[Duration]) -> Dict[str, Any]:
        """Sets its keep-alive and re-arms the idle timer from now: seconds (or
        ``"10m"``, a timedelta), 0 to act as soon as it is idle, None to cancel
        the timer (keep it loaded)."""
        return self.client._t.call("POST", self._path + "/keep-alive",
                                   {"keep_alive": keep_alive_value(seconds)})[1]

    def logs(self, tail: Optional[int] = None) -> str:
        """The last lines of its worker's output."""
        q = "" if tail is None else f"?tail={int(tail)}"
        r = self.client._t.request("GET", self._path + "/logs" + q)
        r.raise_for_status()
        return r.text

    def follow_logs(self, tail: int = 10) -> Iterator[str]:
        """Its worker's output, line by line as it comes (the last tail first)."""
        r = self.client._t.request("GET", f"{self._path}/logs?follow=1&tail={int(tail)}",
                                   stream=True, timeout=None)
        with r:
            r.raise_for_status()
            for ev in r.iter_events():
                yield ev.data

    def events(self, **kw: Any) -> "EventStream":
        """The daemon's events about this model (see Client.events)."""
        return self.client.events(model=self.name, **kw)

    def request(self, method: str, path: str, *, json: Any = None,
                data: Union[bytes, str, None] = None, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, priority: Optional[int] = None,
                keep_alive: Optional[Duration] = None, queue_timeout: Optional[Duration] = None,
                timeout: Any = None) -> Response:
        """A request to the model through the daemon (``/m/{name}{path}``),
        loading it if needed; priority, keep_alive and queue_timeout become
        the X-Modelbuf-* headers. Returns the worker's Response (call
        raise_for_status() to turn an error status into an exception)."""
        if not path.startswith("/"):
            path = "/" + path
        body, h = encode_body(json, data, headers)
        h.update(status_headers(priority, keep_alive, queue_timeout))
        return self.client._t.request(method, "/m/" + quote_name(self.name) + path, body=body,
                                      headers=h, stream=stream, timeout=timeout)

    def post(self, path: str, **kw: Any) -> Response:
        """POST through the daemon (see request)."""
        return self.request("POST", path, **kw)

    def get(self, path: str, **kw: Any) -> Response:
        """GET through the daemon (see request)."""
        return self.request("GET", path, **kw)

    def use(self, **kw: Any) -> Any:
        """client.use_model(this model, ...)."""
        return self.client.use_model(self.name, **kw)

    def __repr__(self) -> str:
        return f"<Model {self.name}>"


class OpenAI:
    """The daemon's OpenAI-compatible routes (``client.openai``), routed by
    the body's ``model`` (a name or an alias)."""

    def __init__(self, client: "Client") -> None:
        self._c = client

    def models(self) -> List[Dict[str, Any]]:
        """GET /v1/models: the models that speak OpenAI, each alias an id."""
        return self._c._t.call("GET", "/v1/models")[1]["data"]

    def model(self, model_id: str) -> Dict[str, Any]:
        """GET /v1/models/{id}."""
        return self._c._t.call("GET", "/v1/models/" + quote_name(model_id))[1]

    def _post(self, path: str, body: Dict[str, Any], stream: bool,
              headers: Optional[Dict[str, str]]) -> Any:
        raw, h = encode_body(body, None, headers)
        r = self._c._t.request("POST", path, body=raw, headers=h, stream=stream, timeout=None)
        r.raise_for_status()
        return r.iter_openai() if stream else r.json()

    def chat(self, model: str, messages: List[Dict[str, Any]], stream: bool = False,
             headers: Optional[Dict[str, str]] = None, **params: Any) -> Any:
        """POST /v1/chat/completions: the completion, or with stream=True an
        iterator of its chunks (until ``[DONE]``)."""
        body = {"model": model, "messages": messages, **params}
        if stream:
            body["stream"] = True
        return self._post("/v1/chat/completions", body, stream, headers)

    def completions(self, model: str, prompt: Any, stream: bool = False,
                    headers: Optional[Dict[str, str]] = None, **params: Any) -> Any:
        """POST /v1/completions (stream=True: an iterator of chunks)."""
        body = {"model": model, "prompt": prompt, **params}
        if stream:
            body["stream"] = True
        return self._post("/v1/completions", body, stream, headers)

    def embeddings(self, model: str, input: Any, headers: Optional[Dict[str, str]] = None,
                   **params: Any) -> Dict[str, Any]:
        """POST /v1/embeddings."""
        return self._post("/v1/embeddings", {"model": model, "input": input, **params}, False,
                          headers)


class EventStream(EventStreamBase):
    """The daemon's event stream (see ``Client.events``): an iterator of
    dicts, a context manager that opens the stream on entry."""

    def open(self) -> "EventStream":
        """Opens the stream now (once): events from here on are seen."""
        if self._r is None and self._gen is None and not self._closed:
            self._r = self._connect()
        return self

    def _connect(self) -> Response:
        r = self._client._t.request("GET", "/api/events", headers=self._headers(), stream=True,
                                    timeout=None)
        if r.status >= 400:
            with r:
                r.raise_for_status()
        return r

    def _events(self) -> Iterator[Dict[str, Any]]:
        while True:
            try:
                if self._r is None:
                    self._r = self._connect()
                with self._r as r:
                    for ev in r.iter_events():
                        doc = self._take(ev)
                        if doc is not None:
                            yield doc
            except ModelbufError:
                if self._closed:
                    return
                if not self._reconnect:
                    raise
            finally:
                self._r = None
            if not self._reconnect or self._closed:
                return
            time.sleep(0.5)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self

    def __next__(self) -> Dict[str, Any]:
        if self._gen is None:
            self._gen = self._events()
        return next(self._gen)

    def close(self) -> None:
        """Ends the stream."""
        self._closed = True
        r = self._r
        if r is not None:
            r.close()
        if self._gen is not None:
            self._gen.close()

    def __enter__(self) -> "EventStream":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Client:
    """A connection to modelbufd.

    Args:
        url: the daemon, ``http://host:port`` or ``unix:/path``; default
            ``MODELBUF_URL``, else the first of ``MODELBUF_URLS``, else
            http://127.0.0.1:8686.
        api_key: sent as ``Authorization: Bearer``; default ``MODELBUF_API_KEY``.
        timeout: seconds to wait for each answer of a short call (loads,
            acquires and streams wait as long as the daemon makes them).

    Thread-safe: one client may serve every thread of a program.
    """

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = 60.0) -> None:
        self.endpoint, headers = client_setup(url, api_key)
        self.timeout = timeout
        self._t = Transport(self.endpoint, headers, timeout)
        self.openai = OpenAI(self)

    @property
    def url(self) -> str:
        """The daemon's URL."""
        return self.endpoint.url()

    # -- the daemon ---------------------------------------------------------
    def health(self) -> Dict[str, Any]:
        """GET /health."""
        return self._t.call("GET", "/health")[1]

    def models(self) -> List[Dict[str, Any]]:
        """Every model's status."""
        return self._t.call("GET", "/api/models")[1]["models"]

    def model(self, name: str) -> Model:
        """A model by name or alias (nothing is asked of the daemon yet)."""
        return Model(self, name)

    def devices(self) -> List[Dict[str, Any]]:
        """GET /api/devices: capacity, used, free and resident models per device."""
        return self._t.call("GET", "/api/devices")[1]["devices"]

    def cleanup(self) -> Dict[str, Any]:
        """POST /api/cleanup: every running worker's cleanup hook."""
        return self._t.call("POST", "/api/cleanup", {}, timeout=None)[1]

    def metrics(self) -> str:
        """GET /metrics (Prometheus text)."""
        r = self._t.request("GET", "/metrics")
        r.raise_for_status()
        return r.text

    def events(self, model: Optional[str] = None, last_event_id: Optional[int] = None,
               reconnect: bool = False) -> "EventStream":
        """The daemon's events as they happen (``GET /api/events``), each a dict
        (``type``, ``model``, ``from``, ``to``, ``reason``, ``seq``, ...); only
        those of model when given (a name or an alias is matched against the
        event's model name: give the name). ``{"type": "dropped", "dropped":
        N}`` when the client fell too far behind. With reconnect=True a broken
        stream is opened again after the last event seen, so none is missed
        while the daemon runs. ``with client.events() as evs:`` opens the
        stream on entry, so everything that happens after that line is seen
        (iterating alone opens it at the first event asked for); close it (or
        leave the block) to end it."""
        return EventStream(self, model, last_event_id, reconnect)

    # -- leases ---------------------------------------------------------------
    def acquire(self, name: str, keep_alive: Optional[Duration] = None,
                priority: Optional[int] = None, timeout: Optional[Duration] = None,
                ttl: Duration = DEFAULT_TTL) -> Lease:
        """Takes a lease (loading the model if needed; waits for its turn).
        The caller renews and releases it; use_model() does both."""
        body = acquire_body(keep_alive, priority, timeout, ttl)
        _, doc = self._t.call("POST", f"/api/models/{quote_name(name)}/acquire", body,
                              timeout=_acquire_timeout(timeout))
        return Lease(self, doc, ttl)

    @contextlib.contextmanager
    def use_model(self, name: str, auto_unload: bool = False,
                  keep_alive: Optional[Duration] = None, priority: Optional[int] = None,
                  timeout: Optional[Duration] = None,
                  ttl: Duration = DEFAULT_TTL) -> Iterator[Lease]:
        """Holds the model for the block: ``with client.use_model("x") as m:``.

        The model is loaded (or restored) and held by a lease over HTTP,
        renewed in the background every ttl/3 while the block runs, so a long
        job is never unloaded under it whatever the model's keep-alive; the
        lease is released when the block ends, by an exception too.

        Args:
            auto_unload: unload the model when the block ends (load, use,
                free), rather than leaving it to its keep-alive.
            keep_alive: the model's keep-alive after this use (seconds,
                "10m", 0 = act at once, -1 = forever; None: its own).
            priority: the place in the model's queue (higher first).
            timeout: the longest wait for a slot (None: the model's
                queue_timeout; -1: no bound).
            ttl: seconds the lease lives between renewals (a client that
                dies holds the model this long at most).

        Nesting is safe: a use_model() of a model this thread (or task)
        holds already reuses the held lease (a second one could wait for
        the first's slot forever); auto_unload of any level applies when
        the outermost block ends. The block's LeaseLost (raised at its end
        when no other exception is on its way): the model was lost while
        held, and the work done may not stand.
        """
        h = _find_held(self, name)
        if h is None and _held.get() and any(x.owner is self for x in _held.get()):
            # Maybe an alias of a held model: ask the daemon for its name.
            try:
                h = _find_held(self, self.model(name).status()["name"])
            except NotFound:
                h = None
        if h is not None:
            h.depth += 1
            h.auto_unload |= auto_unload
            try:
                yield h.lease
            finally:
                h.depth -= 1
            return
        lease = self.acquire(name, keep_alive, priority, timeout, ttl)
        lease._start()
        held = _Held(self, {name, lease.model}, lease, 1, auto_unload)
        token = _held.set(_held.get() + (held,))
        ok = False
        try:
            yield lease
            ok = True
        finally:
            _held.reset(token)
            try:
                lease.release()
            except ModelbufError:
                if ok:
                    raise
            finally:
                if held.auto_unload:
                    try:
                        self.model(lease.model).unload()
                    except ModelbufError:
                        if ok:
                            raise

    # -- raw requests -----------------------------------------------------
    def request(self, method: str, path: str, *, json: Any = None,
                data: Union[bytes, str, None] = None, headers: Optional[Dict[str, str]] = None,
                stream: bool = False, timeout: Any = _UNSET) -> Response:
        """Any request to the daemon; the Response as it came (no exception
        for an error status: see Response.raise_for_status)."""
        body, h = encode_body(json, data, headers)
        return self._t.request(method, path, body=body, headers=h, stream=stream,
                               timeout=timeout)

    def close(self) -> None:
        """Closes the idle connections (the client can still be used)."""
        self._t.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<modelbuf.Client {self.url}>"
