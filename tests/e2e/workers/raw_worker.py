#!/usr/bin/python3
"""A raw-socket HTTP/1.1 model worker for the front door's tests (standard
library only, a thread per connection, keep-alive).

It parses what the daemon sends strictly and writes down everything it
receives: each request is appended to the JSONL file named by --record,
first as {"phase": "head"} when its header block is in, then as
{"phase": "done"} with its body, or {"phase": "cut"} when the connection
ended mid-body. A record holds the method, the target exactly as received
(bytes as latin-1), the headers as received ([name, value], in order), the
raw header block, the framing the sender used ("content-length", "chunked",
"none"), the body's length, sha256 and (up to 64 KiB) base64, the chunked
trailers, and "violations": every way the request departs from RFC 9112
(bare CR, bare LF, obs-fold, CTL in a field, Content-Length with
Transfer-Encoding, ...). The first line of the file is {"phase": "start"}
with the worker's pid.

Answers (paths after /m/NAME):
  GET /health               200
  anything else             200, a JSON echo of the record
  /status/NNN               that status line literally (101, 999, 099 ...)
  /interim/NNN              an interim NNN answer (100, 103), then the echo
  /bad/KIND                 a malformed answer: garbage, status-line, clte,
                            bare-cr, obs-fold, nul, two-cl; or one that
                            starts well, pauses 300 ms and then fails:
                            cut-cl, cut-chunked, cut-chunk-boundary,
                            bad-chunk-size
  /sse?n=N&ms=M             text/event-stream, chunked, N events M ms apart
  /slow?ms=M                the echo after M ms
  /crash                    exits at once, the request unanswered
  /big?bytes=N              N bytes (0..255 repeated) with Content-Length
A request that cannot be framed (unknown transfer coding, two different
Content-Length values, a bad chunk) gets 400 or 501 and the connection is
closed; every other violation is recorded and the request answered.
"""
import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--record", required=True)
a = p.parse_args()

TOKEN = set(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
KEEP_BODY = 64 * 1024
REASONS = {100: "Continue", 101: "Switching Protocols", 103: "Early Hints", 200: "OK",
           400: "Bad Request", 404: "Not Found", 501: "Not Implemented"}
lock = threading.Lock()
conn_ids = iter(range(1, 1 << 62))


def record(rec):
    line = json.dumps(rec) + "\n"
    with lock, open(a.record, "a") as f:
        f.write(line)


class Eof(Exception):
    pass


class Unframed(Exception):
    """The request's framing cannot be trusted: answer, then close."""

    def __init__(self, status, why):
        super().__init__(why)
        self.status = status


class Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, bytearray()

    def fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise Eof()
        self.buf += data

    def line(self, limit=1 << 20):
        """One line with its LF (a bare LF included)."""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            if len(self.buf) > limit:
                raise Unframed(400, "line too long")
            self.fill()

    def exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def split_line(raw, violations):
    if raw.endswith(b"\r\n"):
        body = raw[:-2]
    else:
        violations.append("bare LF")
        body = raw[:-1]
    if b"\r" in body:
        violations.append("bare CR")
    return body


def ctl(b):
    return any((c < 0x20 and c != 0x09) or c == 0x7F for c in b)


def read_head(rd):
    """The request line and headers: (rec, raw head), or None at a clean EOF."""
    violations, raw = [], b""
    try:
        first = rd.line()
    except Eof:
        return None
    while first in (b"\r\n", b"\n"):  # RFC 9112 2.2: empty lines before a request
        violations.append("empty line before the request line")
        first = rd.line()
    raw += first
    parts = split_line(first, violations).split(b" ")
    if len(parts) != 3:
        violations.append("request line is not METHOD SP TARGET SP VERSION")
        parts = (parts + [b"", b""])[:3]
    method, target, version = parts
    if not method or any(c not in TOKEN for c in method):
        violations.append("bad method")
    if not target or ctl(target) or any(c >= 0x80 or c == 0x20 or c == 0x23 for c in target):
        violations.append("bad target")
    if version not in (b"HTTP/1.0", b"HTTP/1.1"):
        violations.append("bad version")
    headers = []
    while True:
        ln = rd.line()
        raw += ln
        body = split_line(ln, violations)
        if body == b"":
            break
        if body[:1] in (b" ", b"\t"):
            violations.append("obs-fold")
            headers.append(["", body.decode("latin-1")])
            continue
        name, sep, value = body.partition(b":")
        if not sep or not name or any(c not in TOKEN for c in name):
            violations.append("bad field name")
        value = value.strip(b" \t")
        if ctl(value):
            violations.append("CTL in field value")
        headers.append([name.decode("latin-1"), value.decode("latin-1")])
    hosts = [v for n, v in headers if n.lower() == "host"]
    if version == b"HTTP/1.1" and len(hosts) != 1:
        violations.append("Host missing or repeated")
    rec = {"method": method.decode("latin-1"), "target": target.decode("latin-1"),
           "version": version.decode("latin-1"), "headers": headers,
           "head": raw.decode("latin-1"), "violations": violations}
    return rec


def field(rec, name):
    return [v for n, v in rec["headers"] if n.lower() == name]


def framing(rec):
    te, cl = field(rec, "transfer-encoding"), field(rec, "content-length")
    if te and cl:
        rec["violations"].append("Content-Length with Transfer-Encoding")
    if te:
        codings = [c.strip().lower() for c in ",".join(te).split(",")]
        if codings != ["chunked"]:
            raise Unframed(501, "transfer coding " + ",".join(te))
        return "chunked", None
    if cl:
        if len(cl) > 1:
            rec["violations"].append("several Content-Length fields")
        if len(set(cl)) > 1 or not cl[0].isdigit() or not cl[0].isascii():
            raise Unframed(400, "bad Content-Length " + repr(cl))
        return "content-length", int(cl[0])
    return "none", 0


def read_chunked(rd, rec, sink):
    exts, trailers = [], []
    while True:
        ln = rd.line()
        size_s, _, ext = ln.rstrip(b"\r\n").partition(b";")
        if ext:
            exts.append(ext.decode("latin-1"))
        if not ln.endswith(b"\r\n") or not size_s or len(size_s) > 16 or \
                any(c not in b"0123456789abcdefABCDEF" for c in size_s):
            raise Unframed(400, "bad chunk size line " + repr(ln[:40]))
        size = int(size_s, 16)
        if size == 0:
            break
        sink(rd.exact(size))
        if rd.exact(2) != b"\r\n":
            raise Unframed(400, "chunk data not followed by CRLF")
    while True:
        ln = rd.line()
        if ln == b"\r\n":
            break
        trailers.append(ln.rstrip(b"\r\n").decode("latin-1"))
    rec["chunk_extensions"], rec["trailers"] = exts, trailers


def send(sock, status, body=b"", ctype="application/json", extra=(), head_only=False,
         close=False):
    hdr = f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}\r\n"
    hdr += f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
    for n, v in extra:
        hdr += f"{n}: {v}\r\n"
    if close:
        hdr += "Connection: close\r\n"
    sock.sendall(hdr.encode("latin-1") + b"\r\n" + (b"" if head_only else body))


BAD = {
    "garbage": b"this is not HTTP at all\r\n\r\n",
    "status-line": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\nX-Raw-Marker: bad-answer\r\n\r\nok",
    "clte": b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n"
            b"X-Raw-Marker: bad-answer\r\n\r\n14\r\nraw-bad-answer-clte!\r\n0\r\n\r\n",
    "bare-cr": b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX-Raw-Marker: bad-answer\r"
               b"Set-Cookie: raw-injected=1\r\n\r\nraw-bad-answer",
    "obs-fold": b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX-Raw-Marker: bad-answer\r\n"
                b" X-Raw-Folded: raw-injected\r\n\r\nraw-bad-answer",
    "nul": b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nX-Raw-Marker: bad\x00answer\r\n\r\n"
           b"raw-bad-answer",
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\nContent-Length: 15\r\n"
              b"X-Raw-Marker: bad-answer\r\n\r\nraw-bad-answer!",
    # Answers that start well and fail on the way.
    "cut-cl": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
              + b"c" * 1000,
    "cut-chunked": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked"
                   b"\r\n\r\n10\r\n0123456789abcdef\r\n1000\r\n" + b"c" * 100,
    "cut-chunk-boundary": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: "
                          b"chunked\r\n\r\n10\r\n0123456789abcdef\r\n10\r\nfedcba9876543210\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: "
                      b"chunked\r\n\r\n10\r\n0123456789abcdef\r\nzz\r\nraw\r\n0\r\n\r\n",
}


def answer(sock, rec, path, query):
    """Answers one request; True to keep the connection."""
    head_only = rec["method"] == "HEAD"
    q = parse_qs(query)
    if path == "/health":
        send(sock, 200, b'{"status": "ok"}', head_only=head_only)
        return True
    if path.startswith("/status/"):
        code = path[len("/status/"):]
        sock.sendall(f"HTTP/1.1 {code} Raw Status\r\nContent-Type: text/plain\r\n"
                     f"Content-Length: 14\r\nConnection: close, Upgrade\r\nUpgrade: raw\r\n"
                     f"X-Raw-Marker: bad-answer\r\n\r\nraw-bad-answer".encode("latin-1"))
        return False
    if path.startswith("/interim/"):
        code = int(path[len("/interim/"):])
        sock.sendall(f"HTTP/1.1 {code} {REASONS.get(code, 'Interim')}\r\n"
                     "Link: </style.css>; rel=preload\r\n\r\n".encode())
    if path.startswith("/bad/"):
        data = BAD[path[len("/bad/"):]]
        if path.startswith(("/bad/cut-", "/bad/bad-chunk")):
            # The head and a first piece, then a pause: the answer has
            # started at the client before the failure.
            cut = data.index(b"\r\n\r\n") + 4 + 20
            sock.sendall(data[:cut])
            time.sleep(0.3)
            data = data[cut:]
        sock.sendall(data)
        return False
    if path == "/crash":
        os._exit(3)
    if path == "/sse":
        n, ms = int(q.get("n", ["3"])[0]), int(q.get("ms", ["50"])[0])
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(n):
            ev = f"data: {{\"n\": {i}}}\n\n".encode()
            sock.sendall(b"%x\r\n%s\r\n" % (len(ev), ev))
            time.sleep(ms / 1000.0)
        sock.sendall(b"0\r\n\r\n")
        return True
    if path == "/big":
        n = int(q.get("bytes", ["0"])[0])
        sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                     f"Content-Length: {n}\r\n\r\n".encode())
        if not head_only:
            block = bytes(range(256)) * 256
            left = n
            while left > 0:
                sock.sendall(block[:min(left, len(block))])
                left -= len(block)
        return True
    if path == "/slow":
        time.sleep(int(q.get("ms", ["1000"])[0]) / 1000.0)
    out = {k: rec[k] for k in rec if k not in ("head", "body_b64")}
    out["body_b64"] = rec.get("body_b64")
    send(sock, 200, json.dumps(out).encode(), head_only=head_only)
    return True


def serve(sock):
    conn = next(conn_ids)
    rd = Reader(sock)
    seq = 0
    try:
        while True:
            rec = read_head(rd)
            if rec is None:
                return
            seq += 1
            rec.update(conn=conn, seq=seq, pid=os.getpid(), time=time.time())
            try:
                rec["framing"], n = framing(rec)
            except Unframed as e:
                rec.update(phase="done", framing="invalid", error=str(e))
                record(rec)
                send(sock, e.status, json.dumps({"worker_error": str(e)}).encode(), close=True)
                return
            record(dict(rec, phase="head"))
            if [v.lower() for v in field(rec, "expect")] == ["100-continue"]:
                sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            h, got = hashlib.sha256(), []
            size = [0]

            def sink(data):
                h.update(data)
                size[0] += len(data)
                if size[0] <= KEEP_BODY:
                    got.append(data)

            try:
                if rec["framing"] == "chunked":
                    read_chunked(rd, rec, sink)
                else:
                    left = n
                    while left > 0:  # as it comes (a streamed body arrives slowly)
                        if not rd.buf:
                            rd.fill()
                        take = min(left, len(rd.buf))
                        sink(bytes(rd.buf[:take]))
                        del rd.buf[:take]
                        left -= take
            except Unframed as e:
                rec.update(phase="done", error=str(e), body_len=size[0])
                record(rec)
                send(sock, e.status, json.dumps({"worker_error": str(e)}).encode(), close=True)
                return
            except (Eof, OSError):
                rec.update(phase="cut", body_len=size[0])
                record(rec)
                return
            rec.update(phase="done", body_len=size[0], body_sha256=h.hexdigest(),
                       body_b64=base64.b64encode(b"".join(got)).decode()
                       if size[0] <= KEEP_BODY else None)
            record(rec)
            path, _, query = rec["target"].partition("?")
            keep = answer(sock, rec, path, query)
            conn_hdr = ",".join(field(rec, "connection")).lower()
            if not keep or "close" in conn_hdr or \
                    (rec["version"] == "HTTP/1.0" and "keep-alive" not in conn_hdr) or \
                    "Content-Length with Transfer-Encoding" in rec["violations"]:
                return
    except (Eof, OSError, Unframed):
        return
    finally:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()


def main():
    record({"phase": "start", "pid": os.getpid(), "port": a.port})
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", a.port))
    srv.listen(1024)
    print(f"raw_worker ready on port {a.port}", flush=True)
    while True:
        s, _ = srv.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(s,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
