"""What the synchronous and the asyncio client share: where the daemon is,
how values are written for it, server-sent events, and the answers' checks.
Private to the package."""
from __future__ import annotations

import datetime
import json
import os
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple, Union

from .errors import BadRequest, error_from

DEFAULT_URL = "http://127.0.0.1:8686"
# How long a lease taken by use_model() lives between two renewals (s).
DEFAULT_TTL = 30.0

Duration = Union[int, float, str, datetime.timedelta]


@dataclass(frozen=True)
class Endpoint:
    """Where an HTTP server is: TCP host and port (TLS or not), or a Unix socket."""

    scheme: str                 # "http", "https" or "unix"
    host: str = ""
    port: int = 0
    unix_path: str = ""
    prefix: str = ""            # a path the server is mounted under ("" or "/x")

    def url(self) -> str:
        """The endpoint as a URL (``unix:/path`` for a socket)."""
        if self.scheme == "unix":
            return "unix:" + self.unix_path
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


def default_url() -> str:
    """``MODELBUF_URL``, else the first of ``MODELBUF_URLS`` (comma-separated),
    else http://127.0.0.1:8686."""
    url = os.environ.get("MODELBUF_URL", "").strip()
    if url:
        return url
    for u in os.environ.get("MODELBUF_URLS", "").split(","):
        if u.strip():
            return u.strip()
    return DEFAULT_URL


def parse_endpoint(url: str) -> Endpoint:
    """``http://host:port[/prefix]``, ``https://...``, ``host:port``, or
    ``unix:/path/to.sock`` (the daemon's ``listen: unix:PATH``)."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError("the daemon's URL is empty")
    url = url.strip()
    if url.startswith("unix:"):
        path = url[5:]
        if path.startswith("//"):
            path = path[2:]
        if not path.startswith("/"):
            raise ValueError(f"unix socket URL needs an absolute path: {url!r}")
        return Endpoint("unix", unix_path=path)
    if "://" not in url:
        url = "http://" + url
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"unsupported URL scheme {u.scheme!r} in {url!r} (http, https, unix:)")
    if not u.hostname:
        raise ValueError(f"no host in {url!r}")
    port = u.port or (443 if u.scheme == "https" else 80)
    return Endpoint(u.scheme, host=u.hostname, port=port, prefix=u.path.rstrip("/"))


def client_setup(url: Optional[str], api_key: Optional[str]) -> Tuple[Endpoint, Dict[str, str]]:
    """A client's endpoint and headers: url else the environment's default,
    api_key else MODELBUF_API_KEY (no header when empty). Client and
    AsyncClient both start here."""
    endpoint = parse_endpoint(url or default_url())
    key = api_key if api_key is not None else os.environ.get("MODELBUF_API_KEY", "")
    return endpoint, ({"Authorization": "Bearer " + key} if key else {})


class BodyMixin:
    """What a response decodes from its body (``content``, defined by each
    Response class)."""
    content: bytes

    @property
    def text(self) -> str:
        """The body decoded as UTF-8."""
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.content)


def quote_name(name: str) -> str:
    """A model's name as one path segment (``Qwen/Qwen2.5`` -> ``Qwen%2FQwen2.5``)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a model's name is a non-empty string")
    return urllib.parse.quote(name, safe="")


def duration(value: Duration, what: str = "duration") -> Union[int, float, str]:
    """A duration as the daemon takes it: seconds (int or float), a string such
    as ``"10m"``, or a ``timedelta``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be seconds, a duration string or a timedelta")
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float, str)):
        return value
    raise TypeError(f"{what} must be seconds, a duration string or a timedelta, "
                    f"not {type(value).__name__}")


def keep_alive_value(value: Optional[Duration]) -> Union[int, float, str]:
    """keep_alive as the daemon takes it, where None means forever (-1)."""
    if value is None:
        return -1
    return duration(value, "keep_alive")


def header_duration(value: Duration) -> str:
    """A duration for an ``X-Modelbuf-*`` header."""
    v = duration(value)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v)


def encode_body(json_body: Any = None, data: Union[bytes, str, None] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[Optional[bytes], Dict[str, str]]:
    """The body's bytes and headers (JSON when json_body is given)."""
    out = dict(headers or {})
    if json_body is not None and data is not None:
        raise ValueError("give json= or data=, not both")
    if json_body is not None:
        body: Optional[bytes] = json.dumps(json_body).encode()
        if not any(k.lower() == "content-type" for k in out):
            out["Content-Type"] = "application/json"
    elif isinstance(data, str):
        body = data.encode()
    else:
        body = data
    return body, out


def answer_error(status: int, headers: Any, raw: bytes) -> Exception:
    """The exception of an error answer (its JSON error, else its text)."""
    doc: Any = None
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        pass
    return error_from(status, doc, headers.get("Retry-After") if headers else None,
                      raw.decode("utf-8", "replace") if doc is None else "")


def check(status: int, headers: Any, raw: bytes) -> Any:
    """The decoded JSON of an answer; raises the daemon's error for a status
    of 400 or more."""
    if status >= 400:
        raise answer_error(status, headers, raw)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("the daemon answered something that is not JSON: "
                         f"{raw[:200].decode('utf-8', 'replace')!r}", status=status,
                         code="bad_answer") from None


def parse_time(value: Optional[str]) -> Optional[float]:
    """An RFC 3339 time of the daemon (``2026-11-24T00:17:35.120Z``) as a Unix
    timestamp; None stays None."""
    if not value:
        return None
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Event:
    """One server-sent event: ``data`` as sent; ``json()`` decodes it."""

    data: str
    event: str = "message"
    id: Optional[str] = None
    retry: Optional[int] = None

    def json(self) -> Any:
        """The data decoded as JSON."""
        return json.loads(self.data)


@dataclass
class SSEParser:
    """Incremental parser of a ``text/event-stream`` (the WHATWG rules: lines,
    ``data:`` joined with newlines, ``event:``, ``id:``, ``retry:``, comments,
    an event dispatched at a blank line)."""

    _buf: bytes = b""
    _data: List[str] = field(default_factory=list)
    _event: str = ""
    _id: Optional[str] = None
    _retry: Optional[int] = None
    last_id: Optional[str] = None

    def feed(self, chunk: bytes) -> Iterator[Event]:
        """The events completed by chunk."""
        self._buf += chunk
        while True:
            lf, cr = self._buf.find(b"\n"), self._buf.find(b"\r")
            cut = min(x for x in (lf, cr) if x >= 0) if max(lf, cr) >= 0 else -1
            if cut < 0:
                return
            line = self._buf[:cut].decode("utf-8", "replace")
            skip = 2 if self._buf[cut:cut + 2] == b"\r\n" else 1
            if self._buf[cut] == 13 and cut + 1 == len(self._buf):
                return  # a CR at the end: its LF may follow
            self._buf = self._buf[cut + skip:]
            ev = self._line(line)
            if ev is not None:
                yield ev

    def _line(self, line: str) -> Optional[Event]:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            ev = Event("\n".join(self._data), self._event or "message", self._id, self._retry)
            if self._id is not None:
                self.last_id = self._id
            self._data, self._event, self._retry = [], "", None
            return ev
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None


def openai_chunks(events: Iterable[Event]) -> Iterator[Dict[str, Any]]:
    """The chunks of an OpenAI stream (``data: {...}`` until ``data: [DONE]``)."""
    for ev in events:
        if ev.data.strip() == "[DONE]":
            return
        doc = json.loads(ev.data)
        if isinstance(doc, dict) and "error" in doc and not doc.get("choices"):
            raise error_from(500, doc)
        yield doc


def acquire_body(keep_alive: Optional[Duration], priority: Optional[int],
                 timeout: Optional[Duration], ttl: Duration) -> Dict[str, Any]:
    """The body of POST /api/models/{name}/acquire."""
    body: Dict[str, Any] = {"ttl": duration(ttl, "ttl")}
    if keep_alive is not None:
        body["keep_alive"] = duration(keep_alive, "keep_alive")
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError("priority must be an integer")
        body["priority"] = priority
    if timeout is not None:
        body["timeout"] = duration(timeout, "timeout")
    return body


def ttl_seconds(ttl: Duration) -> float:
    """A ttl in seconds, for the renewal's pace (strings like "30s", "2m")."""
    v = duration(ttl, "ttl")
    if isinstance(v, (int, float)):
        if v <= 0:
            raise ValueError("ttl must be more than 0")
        return float(v)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total, num = 0.0, ""
    i = 0
    s = v.strip()
    while i < len(s):
        if s[i].isdigit() or s[i] == ".":
            num += s[i]
            i += 1
            continue
        unit = "ms" if s[i:i + 2] == "ms" else s[i]
        if unit not in units or not num:
            raise ValueError(f"bad ttl {v!r}")
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    if num:
        total += float(num)
    if total <= 0:
        raise ValueError("ttl must be more than 0")
    return total


def status_headers(priority: Optional[int], keep_alive: Optional[Duration],
                   queue_timeout: Optional[Duration]) -> Dict[str, str]:
    """The X-Modelbuf-* headers of a request to a model through the daemon."""
    h: Dict[str, str] = {}
    if priority is not None:
        h["X-Modelbuf-Priority"] = str(int(priority))
    if keep_alive is not None:
        h["X-Modelbuf-Keep-Alive"] = header_duration(keep_alive)
    if queue_timeout is not None:
        h["X-Modelbuf-Queue-Timeout"] = header_duration(queue_timeout)
    return h


def event_item(ev: "Event", model: Optional[str]) -> Tuple[Optional[Dict[str, Any]], Optional[int]]:
    """One server-sent event of /api/events as (the dict to give, or None when
    it is another model's; its id, or None)."""
    if ev.event == "dropped":
        return {"type": "dropped", **ev.json()}, None
    doc = ev.json()
    seq = int(ev.id) if ev.id is not None and ev.id.isdigit() else None
    return (doc if model is None or doc.get("model") == model else None), seq


class EventStreamBase:
    """What the sync and asyncio event streams share: where they resume."""

    def __init__(self, client: Any, model: Optional[str], last_event_id: Optional[int],
                 reconnect: bool) -> None:
        self._client = client
        self._model = model
        self._last = last_event_id
        self._reconnect = reconnect
        self._r: Any = None
        self._gen: Any = None
        self._closed = False

    @property
    def last_event_id(self) -> Optional[int]:
        """The id of the last event received (a resume point), or the one given."""
        return self._last

    def _headers(self) -> Dict[str, str]:
        return {} if self._last is None else {"Last-Event-ID": str(self._last)}

    def _take(self, ev: "Event") -> Optional[Dict[str, Any]]:
        """The dict to give for ev (None: another model's), noting its id."""
        doc, seq = event_item(ev, self._model)
        if seq is not None:
            self._last = seq
        return doc
