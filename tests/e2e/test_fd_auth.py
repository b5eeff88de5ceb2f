"""Authentication first (issue 11): with api_keys, the key is checked as soon
as the headers are in, before any body byte is read or 100 Continue sent;
a keyless request gets 401 and its connection is closed, whatever its body
size; keyless uploads cost the daemon no memory; the credentials are never
forwarded to the worker. GET and HEAD /health stay open."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frontdoor import (MEM, SLOW, Background, Daemon, assert_error, build, config,  # noqa: E402
                       echo_of, exchange, raw_model, rss_kib, uid, wait_for)

KEY = "k1-" + "s3cret"
CFG = config([raw_model("raw", max_concurrency=4)],
             limits={"max_body_size": "64MiB", "header_timeout": "5s"},
             extra=f'api_keys: ["{KEY}"]\n')
AUTH = [("Authorization", f"Bearer {KEY}")]


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CFG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def test_keys_accepted_and_health_open(d):
    for method in ("GET", "HEAD"):
        r, c = exchange(d.port, build(method, "/health"), head=method == "HEAD")
        c.close()
        assert r is not None and r.status == 200, (method, r)
    for path in ("/api/models", "/metrics", "/api/events", "/v1/models"):
        r, c = exchange(d.port, build("GET", path))
        c.close()
        assert_error(r, 401)
    for hdr in ([("Authorization", "Bearer wrong")], [("X-API-Key", "wrong")],
                [("Authorization", KEY)], [("Authorization", f"Basic {KEY}")]):
        r, c = exchange(d.port, build("GET", "/api/models", hdr))
        c.close()
        assert_error(r, 401)
    for hdr in (AUTH, [("X-API-Key", KEY)]):
        r, c = exchange(d.port, build("GET", "/api/models", hdr))
        c.close()
        assert r.status == 200, (hdr, r)


ROUTES = [("POST", "/m/raw/{m}"), ("PUT", "/m/raw/{m}"), ("POST", "/api/models/raw/load"),
          ("POST", "/v1/chat/completions"), ("POST", "/api/gpu/offload"),
          ("POST", "/api/leases/{m}/renew"), ("POST", "/no/such/{m}")]


@pytest.mark.parametrize("method,path", ROUTES)
def test_401_before_any_body_byte(d, method, path):
    """Only the headers, announcing 50 MB (under max_body_size): the 401
    comes at once and the connection closes."""
    m = uid()
    c = d.connect()
    c.send(build(method, path.replace("{m}", m), [("Content-Length", str(50_000_000))]))
    try:
        r = c.response(timeout=3)
    except TimeoutError:
        r = None
    closed = c.wait_closed(3)
    c.close()
    assert r is not None, "no 401 before the body (the daemon waits for it)"
    assert_error(r, 401)
    assert closed, "the connection stayed open after 401"
    assert d.seen("raw", m) == []


@pytest.mark.parametrize("path", ["/m/raw/{m}", "/api/models/raw/load", "/v1/embeddings"])
def test_keyless_expect_gets_401_not_100(d, path):
    m = uid()
    c = d.connect()
    c.send(build("POST", path.replace("{m}", m), [("Content-Length", "1000"),
                                                   ("Expect", "100-continue")]))
    try:
        r = c.response(stop_at_interim=True, timeout=3)
    except TimeoutError:
        r = None
    closed = c.wait_closed(3)
    c.close()
    assert r is not None and r.status != 100, "100 Continue without a key"
    assert_error(r, 401)
    assert closed
    assert d.seen("raw", m) == []


def test_expect_with_the_key_continues(d):
    m = uid()
    # With the key: 100 Continue, then the answer.
    c = d.connect()
    c.send(build("POST", f"/m/raw/{m}", AUTH + [("Content-Length", "5"),
                                                 ("Expect", "100-continue")]))
    r = c.response(stop_at_interim=True, timeout=5)
    assert r.status == 100, r
    c.send(b"hello")
    echo_of(c.response(), f"/{m}", b"hello")
    c.close()


def test_keyless_oversized_body_is_401_not_413(d):
    for path in ("/m/raw/x", "/api/models/raw/load"):
        c = d.connect()
        c.send(build("POST", path, [("Content-Length", str(100 << 20))]))
        try:
            r = c.response(timeout=3)
        except TimeoutError:
            r = None
        closed = c.wait_closed(3)
        c.close()
        assert_error(r, 401)
        assert closed
    # With the key, the size check: 413.
    r, c = exchange(d.port, build("POST", "/m/raw/x", AUTH + [("Content-Length",
                                                               str(100 << 20))]), timeout=5)
    c.close()
    assert_error(r, 413)


def test_credentials_not_forwarded(d):
    for hdr in (AUTH, [("X-API-Key", KEY)]):
        m = uid()
        r, c = exchange(d.port, build("POST", f"/m/raw/{m}", hdr, b"body"))
        c.close()
        echo_of(r, f"/{m}", b"body")
        (rec,) = wait_for(lambda: d.seen("raw", m, phases=("done",)), 2)
        names = [n.lower() for n, _ in rec["headers"]]
        assert "authorization" not in names and "x-api-key" not in names, rec["headers"]
        assert KEY not in rec["head"]


def test_keyless_uploads_do_not_grow_the_daemon(d):
    """8 keyless clients each pushing 60 MiB (under max_body_size): the
    daemon reads none of it, its RSS stays within a few MiB."""
    size = 60 << 20
    block = b"x" * (256 << 10)
    base = rss_kib(d.pid)
    peak = [base]
    done = []

    def push(path):
        c = d.connect(timeout=30)
        c.send(build("POST", path, [("Content-Length", str(size))]))
        sent = 0
        while sent < size and c.try_send(block):
            sent += len(block)
        try:
            r = c.response(timeout=10)
        except (TimeoutError, AssertionError):
            r = None
        c.close()
        done.append(1)
        return r

    pushers = [Background(push, p) for p in ("/api/models/raw/load", "/m/raw/up",
                                             "/v1/embeddings", "/api/cleanup") * 2]
    deadline = time.time() + 120 * SLOW
    while len(done) < len(pushers) and time.time() < deadline:
        peak[0] = max(peak[0], rss_kib(d.pid))
        time.sleep(0.01)
    answers = [p.join() for p in pushers]
    grown = (peak[0] - base) / 1024
    assert grown < 8 * MEM, f"the daemon grew by {grown:.0f} MiB reading keyless bodies"
    for r in answers:
        assert r is None or r.status == 401, r
    assert d.get("/health")[0] == 200
