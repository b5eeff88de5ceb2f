"""A small HTTP/1.1 client over the standard library's http.client: kept-alive
connections reused across requests and threads, TCP or a Unix socket, whole
or streamed answers. Private to the package; Response is public."""
from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._version import __version__ as _version
from ._common import BodyMixin, Endpoint, Event, SSEParser, answer_error, check, openai_chunks
from .errors import ConnectionFailed, ModelbufError, Timeout

USER_AGENT = f"modelbuf-python/{_version}"
_UNSET: Any = object()


class _UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix stream socket."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self._path)
        except OSError:
            s.close()
            raise
        self.sock = s


class Response(BodyMixin):
    """An HTTP answer: ``status``, ``headers`` (case-insensitive ``get``), and
    the body as ``content`` / ``text`` / ``json()``, or, for a request made
    with ``stream=True``, piece by piece with ``iter_bytes()``,
    ``iter_lines()``, ``iter_events()`` (server-sent events) or
    ``iter_openai()`` (an OpenAI stream's chunks). A streamed answer is
    closed by reading it to the end, by ``close()``, or by ``with``."""

    def __init__(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 transport: "Transport", url: str) -> None:
        self._resp = resp
        self._conn: Optional[http.client.HTTPConnection] = conn
        self._transport = transport
        self.url = url
        self.status: int = resp.status
        self.reason: str = resp.reason
        self.headers = resp.headers
        self._content: Optional[bytes] = None

    # -- whole answers -------------------------------------------------
    @property
    def ok(self) -> bool:
        """Whether the status is below 400."""
        return self.status < 400

    @property
    def content(self) -> bytes:
        """The whole body (read now if it was streamed)."""
        if self._content is None:
            try:
                self._content = self._resp.read()
            except (OSError, http.client.HTTPException) as e:
                self._discard()
                raise ConnectionFailed(f"the answer from {self.url} was cut: {e}") from e
            self._finish()
        return self._content

    def raise_for_status(self) -> "Response":
        """Raises the error of a status of 400 or more (a ModelbufError
        subclass, from the daemon's or the worker's JSON error); else returns
        self."""
        if self.status >= 400:
            raise answer_error(self.status, self.headers, self.content)
        return self

    # -- streamed answers ----------------------------------------------
    def iter_bytes(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """The body as it arrives, in pieces of at most chunk_size bytes."""
        if self._content is not None:
            if self._content:
                yield self._content
            return
        try:
            while True:
                piece = self._resp.read1(chunk_size)
                if not piece:
                    break
                yield piece
        except (OSError, http.client.HTTPException) as e:
            self._discard()
            raise ConnectionFailed(f"the answer from {self.url} was cut: {e}") from e
        self._content = b""
        self._finish()

    def iter_lines(self) -> Iterator[str]:
        """The body line by line (without the line ends), as it arrives."""
        rest = b""
        for piece in self.iter_bytes():
            rest += piece
            *lines, rest = rest.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if rest:
            yield rest.rstrip(b"\r").decode("utf-8", "replace")

    def iter_events(self) -> Iterator[Event]:
        """The body as server-sent events, each as it arrives."""
        parser = SSEParser()
        for piece in self.iter_bytes():
            yield from parser.feed(piece)
        yield from parser.feed(b"\n\n")

    def iter_openai(self) -> Iterator[Dict[str, Any]]:
        """The chunks of an OpenAI stream (``stream: true``), until ``[DONE]``."""
        try:
            yield from openai_chunks(self.iter_events())
        finally:
            self.close()

    # -- the connection ------------------------------------------------
    def _finish(self) -> None:
        """The body is read: the connection goes back to the pool when it can."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._resp.will_close or not self._resp.isclosed():
            conn.close()
        else:
            self._transport._put(conn)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Ends the answer; an unread rest closes the connection."""
        if self._conn is not None:
            if self._resp.isclosed():
                self._finish()
            else:
                self._discard()

    def __enter__(self) -> "Response":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.url}>"


class Transport:
    """Requests to one HTTP server, on kept-alive connections (thread-safe)."""

    def __init__(self, endpoint: Endpoint, headers: Optional[Dict[str, str]] = None,
                 timeout: Optional[float] = 60.0, max_idle: int = 8) -> None:
        self.endpoint = endpoint
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.timeout = timeout
        self._idle: List[http.client.HTTPConnection] = []
        self._max_idle = max_idle
        self._lock = threading.Lock()

    def _connect(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        e = self.endpoint
        if e.scheme == "unix":
            return _UnixConnection(e.unix_path, timeout)
        if e.scheme == "https":
            return http.client.HTTPSConnection(e.host, e.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(e.host, e.port, timeout=timeout)

    def _take(self) -> Optional[http.client.HTTPConnection]:
        """An idle connection still open (one the server closed is readable:
        its end of file, so it is dropped)."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            sock = conn.sock
            try:
                dead = sock is None or bool(select.select([sock], [], [], 0)[0])
            except (OSError, ValueError):
                dead = True
            if not dead:
                return conn
            conn.close()

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Closes the idle connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for c in idle:
            c.close()

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, timeout: Any = _UNSET,
                stream: bool = False) -> Response:
        """Sends one request; the answer whole (stream=False) or as it comes.
        timeout: seconds for each read and the connect (None: no limit).
        Raises ConnectionFailed when the server cannot be reached, Timeout
        (status 0) when it answers nothing within timeout."""
        t = self.timeout if timeout is _UNSET else timeout
        h = {**self.headers, **(headers or {})}
        target = self.endpoint.prefix + path
        url = self.endpoint.url() + path
        for attempt in range(2):
            conn = self._take()
            reused = conn is not None
            if conn is None:
                conn = self._connect(t)
            else:
                conn.timeout = t
                if conn.sock is not None:
                    conn.sock.settimeout(t)
            try:
                conn.request(method, target, body=body, headers=h)
                resp = conn.getresponse()
            except socket.timeout as e:
                conn.close()
                raise Timeout(f"no answer from {url} within {t} s", code="client_timeout") from e
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    ConnectionAbortedError, http.client.BadStatusLine) as e:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed a kept-alive connection meanwhile
                raise ConnectionFailed(f"the connection to {url} was closed: {e}") from e
            except OSError as e:
                conn.close()
                raise ConnectionFailed(
                    f"cannot reach {self.endpoint.url()}: {e} -- is modelbufd running? "
                    "(url=, MODELBUF_URL)") from e
            r = Response(resp, conn, self, url)
            if not stream:
                _ = r.content
            return r
        raise ModelbufError("unreachable")  # pragma: no cover

    def call(self, method: str, path: str, json_body: Any = None,
             timeout: Any = _UNSET) -> Tuple[int, Any]:
        """A JSON request to the daemon: (status, decoded answer); errors raised."""
        body = None if json_body is None else json.dumps(json_body).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        r = self.request(method, path, body=body, headers=headers, timeout=timeout)
        return r.status, check(r.status, r.headers, r.content)
