"""The asyncio client of modelbufd: the same calls as ``modelbuf.Client``,
awaited, on asyncio streams of the standard library (no thread per call).

    client = modelbuf.AsyncClient()
    async with client.use_model("whisper") as m:
        r = await m.post("/transcribe", json={"audio": "..."})
        print(r.json())
    await client.aclose()
"""
from __future__ import annotations

import asyncio
import contextlib
import json as _json
import ssl
from typing import Any, AsyncIterator, Dict, List, Optional, Tuple, Union

from ._common import (DEFAULT_TTL, BodyMixin, Duration, Endpoint, Event, EventStreamBase,
                      SSEParser, acquire_body, answer_error, check, client_setup, encode_body,
                      keep_alive_value, openai_chunks, parse_endpoint, quote_name,
                      status_headers, ttl_seconds)
from ._http import USER_AGENT
from .client import _acquire_timeout, _find_held, _Held, _held
from .errors import ConnectionFailed, LeaseLost, ModelbufError, NotFound, NotSupported, Timeout

__all__ = ["AsyncClient", "AsyncModel", "AsyncLease", "AsyncResponse", "AsyncOpenAI",
           "AsyncEventStream"]

_UNSET: Any = object()
_MAX_HEAD = 64 * 1024


class Headers(dict):  # type: ignore[type-arg]
    """Response headers; ``get`` ignores case (a repeated header keeps its last value)."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class _Conn:
    """One HTTP/1.1 connection: a reader and a writer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def alive(self) -> bool:
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class AsyncResponse(BodyMixin):
    """An HTTP answer (see ``modelbuf.Response``); the body is read when the
    request was not streamed, else with ``aiter_bytes()``, ``aiter_lines()``,
    ``aiter_events()``, ``aiter_openai()`` or ``await read()``."""

    def __init__(self, transport: "AsyncTransport", conn: _Conn, status: int, reason: str,
                 headers: Headers, url: str, head_only: bool, timeout: Optional[float]) -> None:
        self._transport = transport
        self._conn: Optional[_Conn] = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.url = url
        self._timeout = timeout
        self._content: Optional[bytes] = None
        te = headers.get("transfer-encoding", "").lower()
        self._close_after = "close" in headers.get("connection", "").lower()
        if head_only or status in (204, 304) or 100 <= status < 200:
            self._mode, self._left = "none", 0
        elif "chunked" in te:
            self._mode, self._left = "chunked", 0
        elif headers.get("content-length") is not None:
            self._mode, self._left = "length", int(headers["content-length"])
        else:
            self._mode, self._left, self._close_after = "close", 0, True
        self._done = self._mode == "none" or (self._mode == "length" and self._left == 0)
        if self._done:
            self._content = b""
            self._finish()

    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    async def _read(self, n: int) -> bytes:
        assert self._conn is not None
        return await asyncio.wait_for(self._conn.reader.read(n), self._timeout)

    async def _readexactly(self, n: int) -> bytes:
        assert self._conn is not None
        return await asyncio.wait_for(self._conn.reader.readexactly(n), self._timeout)

    async def _readline(self) -> bytes:
        assert self._conn is not None
        return await asyncio.wait_for(self._conn.reader.readline(), self._timeout)

    async def _next_piece(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self._done:
            return b""
        try:
            if self._mode == "length":
                piece = await self._read(min(self._left, 65536))
                if not piece:
                    raise ConnectionFailed(f"the answer from {self.url} was cut")
                self._left -= len(piece)
                if self._left == 0:
                    self._done = True
                return piece
            if self._mode == "close":
                piece = await self._read(65536)
                if not piece:
                    self._done = True
                return piece
            # chunked
            if self._left == 0:
                line = await self._readline()
                size = line.split(b";")[0].strip()
                if not size:
                    raise ConnectionFailed(f"the answer from {self.url} was cut")
                self._left = int(size, 16)
                if self._left == 0:
                    while (await self._readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    self._done = True
                    return b""
            piece = await self._read(min(self._left, 65536))
            if not piece:
                raise ConnectionFailed(f"the answer from {self.url} was cut")
            self._left -= len(piece)
            if self._left == 0:
                await self._readexactly(2)  # the chunk's CRLF
            return piece
        except asyncio.TimeoutError as e:
            self._discard()
            raise Timeout(f"no more of the answer from {self.url} within {self._timeout} s",
                          code="client_timeout") from e
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            self._discard()
            raise ConnectionFailed(f"the answer from {self.url} was cut: {e}") from e

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        while True:
            piece = await self._next_piece()
            if not piece:
                if self._done:
                    self._content = b""
                    self._finish()
                return
            yield piece

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body line by line as it arrives."""
        rest = b""
        async for piece in self.aiter_bytes():
            rest += piece
            *lines, rest = rest.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    async def aiter_events(self) -> AsyncIterator[Event]:
        """The body as server-sent events."""
        parser = SSEParser()
        async for piece in self.aiter_bytes():
            for ev in parser.feed(piece):
                yield ev
        for ev in parser.feed(b"\n\n"):
            yield ev

    async def aiter_openai(self) -> AsyncIterator[Dict[str, Any]]:
        """The chunks of an OpenAI stream, until ``[DONE]``."""
        try:
            async for ev in self.aiter_events():
                for doc in openai_chunks([ev]):
                    yield doc
                if ev.data.strip() == "[DONE]":
                    return
        finally:
            await self.aclose()

    async def read(self) -> bytes:
        """The whole body."""
        if self._content is None:
            parts = [p async for p in self.aiter_bytes()]
            self._content = b"".join(parts)
        return self._content

    @property
    def content(self) -> bytes:
        """The body (read already: a request not streamed, or after read())."""
        if self._content is None:
            raise RuntimeError("the body of a streamed answer: await read() first")
        return self._content

    def raise_for_status(self) -> "AsyncResponse":
        """Raises the error of a status of 400 or more (the body must be read)."""
        if self.status >= 400:
            raise answer_error(self.status, self.headers, self._content or b"")
        return self

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._close_after or not self._done:
            conn.close()
        else:
            self._transport._put(conn)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    async def aclose(self) -> None:
        """Ends the answer; an unread rest closes the connection."""
        if self._done:
            self._finish()
        else:
            self._discard()

    async def __aenter__(self) -> "AsyncResponse":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<AsyncResponse {self.status} {self.url}>"


class AsyncTransport:
    """Requests to one HTTP server on kept-alive asyncio connections."""

    def __init__(self, endpoint: Endpoint, headers: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = 60.0, max_idle: int = 8) -> None:
        self.endpoint = endpoint
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.timeout = timeout
        self._idle: List[_Conn] = []
        self._max_idle = max_idle

    async def _connect(self, timeout: Optional[float]) -> _Conn:
        e = self.endpoint
        try:
            if e.scheme == "unix":
                coro = asyncio.open_unix_connection(e.unix_path)
            else:
                ctx = ssl.create_default_context() if e.scheme == "https" else None
                coro = asyncio.open_connection(e.host, e.port, ssl=ctx)
            reader, writer = await asyncio.wait_for(coro, timeout)
        except asyncio.TimeoutError as err:
            raise ConnectionFailed(f"cannot reach {e.url()} within {timeout} s") from err
        except OSError as err:
            raise ConnectionFailed(f"cannot reach {e.url()}: {err} -- is modelbufd running? "
                                   "(url=, MODELBUF_URL)") from err
        return _Conn(reader, writer)

    def _put(self, conn: _Conn) -> None:
        if conn.alive() and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()

    def _take(self) -> Optional[_Conn]:
        while self._idle:
            c = self._idle.pop()
            if c.alive():
                return c
            c.close()
        return None

    async def aclose(self) -> None:
        """Closes the idle connections."""
        idle, self._idle = self._idle, []
        for c in idle:
            c.close()
            with contextlib.suppress(Exception):
                await c.writer.wait_closed()

    async def request(self, method: str, path: str, body: Optional[bytes] = None,
                      headers: Optional[Dict[str, str]] = None, timeout: Any = _UNSET,
                      stream: bool = False) -> AsyncResponse:
        """Sends one request (see Transport.request)."""
        t = self.timeout if timeout is _UNSET else timeout
        e = self.endpoint
        host = "localhost" if e.scheme == "unix" else (
            f"[{e.host}]:{e.port}" if ":" in e.host else f"{e.host}:{e.port}")
        h = {"Host": host, **self.headers, **(headers or {})}
        if body is not None or method in ("POST", "PUT", "PATCH"):
            h["Content-Length"] = str(len(body or b""))
        target = e.prefix + path
        url = e.url() + path
        head = f"{method} {target} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
        data = head.encode("latin-1") + (body or b"")
        for attempt in range(2):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = await self._connect(t)
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                status_line = await asyncio.wait_for(conn.reader.readline(), t)
                if not status_line:
                    raise ConnectionResetError("closed before an answer")
                parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                if len(parts) < 2 or not parts[0].startswith("HTTP/"):
                    raise ConnectionFailed(f"{url} answered no HTTP: {status_line[:80]!r}")
                status = int(parts[1])
                reason = parts[2] if len(parts) > 2 else ""
                hdrs = Headers()
                size = 0
                while True:
                    line = await asyncio.wait_for(conn.reader.readline(), t)
                    size += len(line)
                    if size > _MAX_HEAD:
                        raise ConnectionFailed(f"the answer's head from {url} is too large")
                    if line in (b"\r\n", b"\n"):
                        break
                    if not line:
                        raise ConnectionResetError("closed in the answer's head")
                    k, _, v = line.decode("latin-1").partition(":")
                    hdrs[k.strip().lower()] = v.strip()
            except asyncio.TimeoutError as err:
                conn.close()
                raise Timeout(f"no answer from {url} within {t} s", code="client_timeout") from err
            except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError,
                    asyncio.IncompleteReadError) as err:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise ConnectionFailed(f"the connection to {url} was closed: {err}") from err
            except OSError as err:
                conn.close()
                raise ConnectionFailed(f"cannot talk to {e.url()}: {err}") from err
            except ConnectionFailed:
                conn.close()
                raise
            r = AsyncResponse(self, conn, status, reason, hdrs, url, method == "HEAD", t)
            if not stream:
                await r.read()
            return r
        raise ModelbufError("unreachable")  # pragma: no cover

    async def call(self, method: str, path: str, json_body: Any = None,
                   timeout: Any = _UNSET) -> Tuple[int, Any]:
        """A JSON request to the daemon: (status, decoded answer); errors raised."""
        body = None if json_body is None else _json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = await self.request(method, path, body=body, headers=headers, timeout=timeout)
        return r.status, check(r.status, r.headers, r.content)


class AsyncLease:
    """A model held over HTTP (see ``modelbuf.Lease``), renewed by an asyncio
    task while ``async with client.use_model(...)`` runs."""

    def __init__(self, client: "AsyncClient", doc: Dict[str, Any], ttl: Duration) -> None:
        self._client = client
        self.model: str = doc["model"]
        self.id: str = doc["lease"]
        self.url: str = doc.get("url") or ""
        self.expires_at: Optional[str] = doc.get("expires_at")
        self._ttl = ttl
        self.ttl = ttl_seconds(ttl)
        self._lost: Optional[ModelbufError] = None
        self._released = False
        self._task: Optional[asyncio.Task] = None  # type: ignore[type-arg]
        self.renewals = 0
        self._worker: Optional[AsyncTransport] = None
        if self.url:
            self._worker = AsyncTransport(parse_endpoint(self.url), timeout=client.timeout)

    @property
    def lost(self) -> Optional[ModelbufError]:
        """The error that ended the lease under its holder, else None."""
        return self._lost

    async def request(self, method: str, path: str, *, json: Any = None,
                      data: Union[bytes, str, None] = None,
                      headers: Optional[Dict[str, str]] = None, stream: bool = False,
                      timeout: Any = _UNSET) -> AsyncResponse:
        """A request straight to the worker."""
        if self._worker is None:
            raise NotSupported(f"model {self.model!r} has no worker of its own (tensors or "
                               "plugin): call it through the daemon, client.model(name).get()",
                               code="not_supported")
        if not path.startswith("/"):
            path = "/" + path
        body, h = encode_body(json, data, headers)
        return await self._worker.request(method, path, body=body, headers=h, stream=stream,
                                          timeout=timeout)

    async def post(self, path: str, **kw: Any) -> AsyncResponse:
        """POST path to the worker."""
        return await self.request("POST", path, **kw)

    async def get(self, path: str, **kw: Any) -> AsyncResponse:
        """GET path from the worker."""
        return await self.request("GET", path, **kw)

    async def renew(self) -> None:
        """Renews the lease now for another ttl."""
        t = self._client.timeout
        try:
            _, doc = await self._client._t.call(
                "POST", f"/api/leases/{self.id}/renew", {"ttl": self._ttl},
                timeout=min(t, max(self.ttl / 3.0, 1.0)) if t else max(self.ttl / 3.0, 1.0))
        except NotFound as e:
            raise LeaseLost("the lease expired before it was renewed: the model may have been "
                            "unloaded while it was used", status=404, code="lease_expired",
                            body=e.body) from e
        self.expires_at = doc.get("expires_at")
        self.renewals += 1

    async def _renew_loop(self) -> None:
        interval = max(self.ttl / 3.0, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.renew()
            except LeaseLost as e:
                self._lost = e
                return
            except ModelbufError:
                continue

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._renew_loop())

    async def release(self) -> None:
        """Releases the lease (once); LeaseLost as for ``Lease.release``."""
        if self._released:
            return
        self._released = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self._client._t.call("DELETE", f"/api/leases/{self.id}")
        except NotFound as e:
            raise self._lost or LeaseLost(
                "the lease had expired: the model may have been unloaded while it was used",
                status=404, code="lease_expired", body=e.body) from e
        finally:
            if self._worker is not None:
                await self._worker.aclose()
        if self._lost is not None:
            raise self._lost

    def __repr__(self) -> str:
        return f"<AsyncLease {self.model} {self.url or '(no worker)'}>"


class AsyncModel:
    """A model of the daemon (see ``modelbuf.Model``), awaited."""

    def __init__(self, client: "AsyncClient", name: str) -> None:
        self.client = client
        self.name = name
        self._path = "/api/models/" + quote_name(name)

    @property
    def url(self) -> str:
        """The model's base URL through the daemon."""
        return self.client.url + "/m/" + quote_name(self.name)

    async def status(self) -> Dict[str, Any]:
        """The model's status."""
        return (await self.client._t.call("GET", self._path))[1]

    async def load(self, keep_alive: Optional[Duration] = None,
                   wait: bool = True) -> Dict[str, Any]:
        """Loads (or restores) it now."""
        body: Dict[str, Any] = {}
        if keep_alive is not None:
            body["keep_alive"] = keep_alive_value(keep_alive)
        if not wait:
            body["wait"] = False
        return (await self.client._t.call("POST", self._path + "/load", body, timeout=None))[1]

    async def offload(self) -> Dict[str, Any]:
        """Moves it to host RAM."""
        return (await self.client._t.call("POST", self._path + "/offload", {}, timeout=None))[1]

    async def unload(self) -> Dict[str, Any]:
        """Frees it on every tier."""
        return (await self.client._t.call("POST", self._path + "/unload", {}, timeout=None))[1]

    async def keep_alive(self, seconds: Optional[Duration]) -> Dict[str, Any]:
        """Sets its keep-alive (None: forever, 0: at once) and re-arms the timer."""
        return (await self.client._t.call("POST", self._path + "/keep-alive",
                                          {"keep_alive": keep_alive_value(seconds)}))[1]

    async def logs(self, tail: Optional[int] = None) -> str:
        """The last lines of its worker's output."""
        q = "" if tail is None else f"?tail={int(tail)}"
        r = await self.client._t.request("GET", self._path + "/logs" + q)
        r.raise_for_status()
        return r.text

    def events(self, **kw: Any) -> "AsyncEventStream":
        """The daemon's events about this model."""
        return self.client.events(model=self.name, **kw)

    async def request(self, method: str, path: str, *, json: Any = None,
                      data: Union[bytes, str, None] = None,
                      headers: Optional[Dict[str, str]] = None, stream: bool = False,
                      priority: Optional[int] = None, keep_alive: Optional[Duration] = None,
                      queue_timeout: Optional[Duration] = None,
                      timeout: Any = None) -> AsyncResponse:
        """A request to the model through the daemon (``/m/{name}{path}``)."""
        if not path.startswith("/"):
            path = "/" + path
        body, h = encode_body(json, data, headers)
        h.update(status_headers(priority, keep_alive, queue_timeout))
        return await self.client._t.request(method, "/m/" + quote_name(self.name) + path,
                                            body=body, headers=h, stream=stream, timeout=timeout)

    async def post(self, path: str, **kw: Any) -> AsyncResponse:
        """POST through the daemon."""
        return await self.request("POST", path, **kw)

    async def get(self, path: str, **kw: Any) -> AsyncResponse:
        """GET through the daemon."""
        return await self.request("GET", path, **kw)

    def use(self, **kw: Any) -> Any:
        """client.use_model(this model, ...)."""
        return self.client.use_model(self.name, **kw)


class AsyncOpenAI:
    """The daemon's OpenAI-compatible routes (see ``modelbuf.client.OpenAI``)."""

    def __init__(self, client: "AsyncClient") -> None:
        self._c = client

    async def models(self) -> List[Dict[str, Any]]:
        """GET /v1/models."""
        return (await self._c._t.call("GET", "/v1/models"))[1]["data"]

    async def model(self, model_id: str) -> Dict[str, Any]:
        """GET /v1/models/{id}."""
        return (await self._c._t.call("GET", "/v1/models/" + quote_name(model_id)))[1]

    async def _post(self, path: str, body: Dict[str, Any], stream: bool,
                    headers: Optional[Dict[str, str]]) -> Any:
        raw, h = encode_body(body, None, headers)
        r = await self._c._t.request("POST", path, body=raw, headers=h, stream=stream,
                                     timeout=None)
        if r.status >= 400:
            await r.read()
            r.raise_for_status()
        return r.aiter_openai() if stream else r.json()

    async def chat(self, model: str, messages: List[Dict[str, Any]], stream: bool = False,
                   headers: Optional[Dict[str, str]] = None, **params: Any) -> Any:
        """POST /v1/chat/completions (stream=True: an async iterator of chunks)."""
        body = {"model": model, "messages": messages, **params}
        if stream:
            body["stream"] = True
        return await self._post("/v1/chat/completions", body, stream, headers)

    async def completions(self, model: str, prompt: Any, stream: bool = False,
                          headers: Optional[Dict[str, str]] = None, **params: Any) -> Any:
        """POST /v1/completions."""
        body = {"model": model, "prompt": prompt, **params}
        if stream:
            body["stream"] = True
        return await self._post("/v1/completions", body, stream, headers)

    async def embeddings(self, model: str, input: Any, headers: Optional[Dict[str, str]] = None,
                         **params: Any) -> Dict[str, Any]:
        """POST /v1/embeddings."""
        return await self._post("/v1/embeddings", {"model": model, "input": input, **params},
                                False, headers)


class AsyncEventStream(EventStreamBase):
    """The daemon's event stream (see ``AsyncClient.events``): an async
    iterator of dicts, an async context manager that opens it on entry."""

    async def open(self) -> "AsyncEventStream":
        """Opens the stream now (once): events from here on are seen."""
        if self._r is None and self._gen is None and not self._closed:
            self._r = await self._connect()
        return self

    async def _connect(self) -> AsyncResponse:
        r = await self._client._t.request("GET", "/api/events", headers=self._headers(),
                                          stream=True, timeout=None)
        if r.status >= 400:
            async with r:
                await r.read()
                r.raise_for_status()
        return r

    async def _events(self) -> AsyncIterator[Dict[str, Any]]:
        while True:
            try:
                if self._r is None:
                    self._r = await self._connect()
                async with self._r as r:
                    async for ev in r.aiter_events():
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
            await asyncio.sleep(0.5)

    def __aiter__(self) -> "AsyncEventStream":
        return self

    async def __anext__(self) -> Dict[str, Any]:
        if self._gen is None:
            self._gen = self._events()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Ends the stream."""
        self._closed = True
        r = self._r
        if r is not None:
            await r.aclose()
        if self._gen is not None:
            await self._gen.aclose()  # type: ignore[attr-defined]

    async def __aenter__(self) -> "AsyncEventStream":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class AsyncClient:
    """The asyncio twin of ``modelbuf.Client`` (same arguments and defaults).
    Use it from one event loop; close it with ``await client.aclose()`` or
    ``async with AsyncClient() as client``."""

    def __init__(self, url: Optional[str] = None, api_key: Optional[str] = None,
                 timeout: Optional[float] = 60.0) -> None:
        self.endpoint, headers = client_setup(url, api_key)
        self.timeout = timeout
        self._t = AsyncTransport(self.endpoint, headers, timeout)
        self.openai = AsyncOpenAI(self)

    @property
    def url(self) -> str:
        """The daemon's URL."""
        return self.endpoint.url()

    async def health(self) -> Dict[str, Any]:
        """GET /health."""
        return (await self._t.call("GET", "/health"))[1]

    async def models(self) -> List[Dict[str, Any]]:
        """Every model's status."""
        return (await self._t.call("GET", "/api/models"))[1]["models"]

    def model(self, name: str) -> AsyncModel:
        """A model by name or alias."""
        return AsyncModel(self, name)

    async def devices(self) -> List[Dict[str, Any]]:
        """GET /api/devices."""
        return (await self._t.call("GET", "/api/devices"))[1]["devices"]

    async def cleanup(self) -> Dict[str, Any]:
        """POST /api/cleanup."""
        return (await self._t.call("POST", "/api/cleanup", {}, timeout=None))[1]

    def events(self, model: Optional[str] = None, last_event_id: Optional[int] = None,
               reconnect: bool = False) -> "AsyncEventStream":
        """The daemon's events as they happen (see ``Client.events``):
        ``async for ev in client.events():``; ``async with client.events() as
        evs:`` opens the stream on entry, so everything after that line is seen."""
        return AsyncEventStream(self, model, last_event_id, reconnect)

    async def acquire(self, name: str, keep_alive: Optional[Duration] = None,
                      priority: Optional[int] = None, timeout: Optional[Duration] = None,
                      ttl: Duration = DEFAULT_TTL) -> AsyncLease:
        """Takes a lease (see ``Client.acquire``)."""
        body = acquire_body(keep_alive, priority, timeout, ttl)
        _, doc = await self._t.call("POST", f"/api/models/{quote_name(name)}/acquire", body,
                                    timeout=_acquire_timeout(timeout))
        return AsyncLease(self, doc, ttl)

    @contextlib.asynccontextmanager
    async def use_model(self, name: str, auto_unload: bool = False,
                        keep_alive: Optional[Duration] = None, priority: Optional[int] = None,
                        timeout: Optional[Duration] = None,
                        ttl: Duration = DEFAULT_TTL) -> AsyncIterator[AsyncLease]:
        """``async with client.use_model("x") as m:`` (see ``Client.use_model``);
        the lease is renewed by a task of the running loop. Nesting within a
        task (and the tasks it starts) reuses the held lease."""
        h = _find_held(self, name)
        if h is None and any(x.owner is self for x in _held.get()):
            try:
                h = _find_held(self, (await self.model(name).status())["name"])
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
        lease = await self.acquire(name, keep_alive, priority, timeout, ttl)
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
                await lease.release()
            except ModelbufError:
                if ok:
                    raise
            finally:
                if held.auto_unload:
                    try:
                        await self.model(lease.model).unload()
                    except ModelbufError:
                        if ok:
                            raise

    async def request(self, method: str, path: str, *, json: Any = None,
                      data: Union[bytes, str, None] = None,
                      headers: Optional[Dict[str, str]] = None, stream: bool = False,
                      timeout: Any = _UNSET) -> AsyncResponse:
        """Any request to the daemon; the answer as it came."""
        body, h = encode_body(json, data, headers)
        return await self._t.request(method, path, body=body, headers=h, stream=stream,
                                     timeout=timeout)

    async def aclose(self) -> None:
        """Closes the idle connections."""
        await self._t.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<modelbuf.AsyncClient {self.url}>"
