"""Request smuggling and framing (RFC 9112 section 6, issue 11): Content-Length
with Transfer-Encoding in either order, unknown codings, invalid and
duplicate Content-Length, bad chunk sizes, chunk data without CRLF, a body
shorter than its Content-Length; and the good cases (chunk extensions,
trailers, chunked uploads, pipelining). For every bad request: the right
status, the connection closed, nothing (not even the hidden second request)
at the worker, and well-behaved clients on their own connections, during
and after, get their own answers. For every good one: the worker gets it
exactly once, framed by the daemon with Content-Length."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frontdoor import (Background, Daemon, assert_error, assert_well_framed,  # noqa: E402
                       build, chunked, config, echo_of, exchange, raw_model, sha, uid, victim,
                       wait_for)

BODY_TIMEOUT = 2
CFG = config([raw_model("raw", max_concurrency=4), raw_model("one", max_concurrency=1)],
             limits={"max_body_size": "1MiB", "body_timeout": f"{BODY_TIMEOUT}s",
                     "header_timeout": "5s", "idle_timeout": "30s"})


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CFG)
    victim(daemon)  # the worker is up and has a pooled connection
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def hidden(m):
    """A second request inside a body: it must never reach the worker."""
    return b"GET /smuggled-%s HTTP/1.1\r\nHost: w\r\nContent-Length: 0\r\n\r\n" % m.encode()


def victims(d, n):
    for _ in range(n):
        victim(d)


def attack(d, data, statuses, m, *keywords):
    """data on its own connection is refused with one of statuses, the
    connection closes; nothing with marker m reaches the worker; other
    clients, during and after, get their own answers."""
    statuses = statuses if isinstance(statuses, tuple) else (statuses,)
    during = Background(victims, d, 3)
    r, c = exchange(d.port, data, timeout=5 + BODY_TIMEOUT)
    closed = c.wait_closed(5)
    c.close()
    during.join()
    # A poisoned upstream connection would answer these wrongly: some one
    # after the other, some at once (so that every pooled one is used).
    victims(d, 2)
    for bg in [Background(victims, d, 1) for _ in range(4)]:
        bg.join()
    assert r is not None, "no answer"
    assert r.status in statuses, f"expected {statuses}, got {r!r}"
    if r.status == statuses[0]:
        assert_error(r, r.status, *keywords)
    assert closed, "the connection stayed open after a framing error"
    assert d.seen("raw", m) == [], f"{m} reached the worker: {d.seen('raw', m)}"
    assert d.seen("raw", "smuggled-" + m) == []
    d.wait_until("raw", lambda s: s["inflight"] == 0, timeout=3)  # no lease kept


def post(m, headers, body, version="HTTP/1.1"):
    return build("POST", f"/m/raw/{m}", headers, body, version=version, length=False)


CLTE = ("Content-Length", "Transfer-Encoding")


def test_content_length_with_transfer_encoding(d):
    m = uid()
    attack(d, post(m, [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
                   chunked(b"ping" + hidden(m))), 400, m, *CLTE)
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", "chunked"), ("Content-Length", "4")],
                   chunked(b"ping" + hidden(m))), 400, m, *CLTE)
    # The classic CL.TE form: a length covering an empty chunked body and more.
    m = uid()
    body = b"0\r\n\r\n" + hidden(m)
    attack(d, post(m, [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")],
                   body), 400, m, *CLTE)
    # TE.CL: the chunked body ends early for whoever reads the length.
    m = uid()
    body = b"3\r\nabc\r\n" + b"%x\r\n" % len(hidden(m)) + hidden(m) + b"\r\n0\r\n\r\n"
    attack(d, post(m, [("Transfer-Encoding", "chunked"), ("Content-Length", "3")], body), 400,
           m, *CLTE)
    # An unknown coding with a length: refused either way, never forwarded.
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", "gzip"), ("Content-Length", "5")], b"hello"),
           (400, 501), m, *CLTE)


@pytest.mark.parametrize("te,status", [("gzip", 501), ("identity", 501), ("gzip, chunked", 501),
                                       ("deflate", 501), ("chunked, chunked", 400),
                                       ("chunked;q=1", (501, 400))])
def test_transfer_codings_other_than_chunked(d, te, status):
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", te)], chunked(b"hello" + hidden(m))), status, m,
           "Transfer-Encoding")


def test_two_transfer_encoding_fields_and_http10(d):
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                   chunked(b"hello" + hidden(m))), 400, m, "Transfer-Encoding")
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", "chunked")], chunked(b"hello" + hidden(m)),
                   version="HTTP/1.0"), 400, m, "Transfer-Encoding")


BAD_CL = [("plus sign", ["+5"]), ("minus sign", ["-5"]), ("space inside", ["1 0"]),
          ("hex", ["0x5"]), ("empty", [""]), ("list", ["5, 5"]), ("letters", ["5a"]),
          ("duplicate equal", ["5", "5"]), ("duplicate different", ["5", "6"]),
          ("over 2^63-1", ["9223372036854775808"]), ("over 2^64", ["99999999999999999999"])]


@pytest.mark.parametrize("name,values", BAD_CL, ids=[c[0] for c in BAD_CL])
def test_invalid_content_length(d, name, values):
    m = uid()
    attack(d, post(m, [("Content-Length", v) for v in values], b"hello" + hidden(m)), 400, m,
           "Content-Length")


BAD_CHUNKS = [
    ("size not hex", b"zz\r\nhello\r\n0\r\n\r\n", 400),
    ("negative size", b"-5\r\nhello\r\n0\r\n\r\n", 400),
    ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", 400),
    ("17 hex digits", b"00000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    ("size past 2^64", b"10000000000000005\r\nhello\r\n0\r\n\r\n", 400),
    ("size 2^64-1", b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n", (400, 413)),
    ("size 2^63", b"8000000000000000\r\nhello\r\n0\r\n\r\n", (400, 413)),
    ("data without CRLF", b"5\r\nhelloXX0\r\n\r\n", 400),
    ("data with bare LF", b"5\r\nhello\n0\r\n\r\n", 400),
    ("empty size", b"\r\nhello\r\n0\r\n\r\n", 400),
]


@pytest.mark.parametrize("name,body,status", BAD_CHUNKS, ids=[c[0] for c in BAD_CHUNKS])
def test_bad_chunk(d, name, body, status):
    m = uid()
    attack(d, post(m, [("Transfer-Encoding", "chunked")], body + hidden(m)), status, m, "chunk")


# --- what gets through, and how ------------------------------------------------
def one_done(d, model, target):
    recs = wait_for(lambda: [r for r in d.records(model) if r["target"] == target], 2)
    assert len(recs) == 1, f"{target} reached the worker {len(recs)} times"
    return recs[0]


def test_chunked_upload_reframed_with_content_length(d):
    m = uid()
    pieces = [b"a", b"bc" * 3, bytes(range(256)) * 16, b"\r\n0\r\n\r\n", os.urandom(60000),
              b"x" * 4095, b"end"]
    body = b"".join(pieces)
    r, c = exchange(d.port, post(m, [("Transfer-Encoding", "chunked")], chunked(*pieces)))
    c.close()
    echo_of(r, f"/{m}", body)
    assert_well_framed(one_done(d, "raw", f"/{m}"), len(body))


def test_chunk_extensions_accepted_and_ignored(d):
    m = uid()
    data = (b"5;name=value\r\nhello\r\n6;q=\"a;b\";x\r\n world\r\n0;last=1\r\n\r\n")
    r, c = exchange(d.port, post(m, [("Transfer-Encoding", "chunked")], data))
    c.close()
    echo_of(r, f"/{m}", b"hello world")
    rec = one_done(d, "raw", f"/{m}")
    assert_well_framed(rec, 11)
    assert rec.get("chunk_extensions", []) == []


def test_trailers_accepted_and_not_forwarded(d):
    m = uid()
    data = chunked(b"hello", trailers=f"X-Trailer-{m}: yes\r\nX-Other: 1\r\n".encode())
    r, c = exchange(d.port, post(m, [("Transfer-Encoding", "chunked"), ("Trailer",
                                                                       f"X-Trailer-{m}")],
                                 data))
    c.close()
    echo_of(r, f"/{m}", b"hello")
    rec = one_done(d, "raw", f"/{m}")
    assert_well_framed(rec, 5)
    assert f"X-Trailer-{m}" not in rec["head"] and rec.get("trailers", []) == []


def test_pipelined_requests_each_reach_the_worker_once(d):
    m = uid()
    data = (build("POST", f"/m/raw/{m}-1", body=b"first") +
            post(f"{m}-2", [("Transfer-Encoding", "chunked")], chunked(b"sec", b"ond")) +
            build("GET", f"/m/raw/{m}-3"))
    r, c = exchange(d.port, data)
    echo_of(r, f"/{m}-1", b"first")
    echo_of(c.response(), f"/{m}-2", b"second")
    echo_of(c.response(), f"/{m}-3")
    c.close()
    assert_well_framed(one_done(d, "raw", f"/{m}-1"), 5)
    assert_well_framed(one_done(d, "raw", f"/{m}-2"), 6)
    assert_well_framed(one_done(d, "raw", f"/{m}-3"), 0)


def test_body_longer_than_content_length_is_the_next_request(d):
    """The bytes after Content-Length are the client's next request on its
    own connection: two answers, two well-framed requests at the worker."""
    m = uid()
    second = build("GET", f"/m/raw/second-{m}")
    r, c = exchange(d.port, build("POST", f"/m/raw/first-{m}", [("Content-Length", "5")],
                                  b"hello" + second, length=False))
    echo_of(r, f"/first-{m}", b"hello")
    echo_of(c.response(), f"/second-{m}")
    c.close()
    assert_well_framed(one_done(d, "raw", f"/first-{m}"), 5)
    assert_well_framed(one_done(d, "raw", f"/second-{m}"), 0)


def test_body_shorter_than_content_length_times_out_with_408(d):
    """Nothing is forwarded (the body is not all there), the client gets 408
    after body_timeout and the connection closes; meanwhile the model's one
    slot serves others."""
    m = uid()
    c = d.connect(timeout=20)
    c.send(build("POST", f"/m/one/{m}", [("Content-Length", "100")], length=False) +
           b"0123456789")
    t0 = time.monotonic()
    for _ in range(3):
        victim(d, "one", timeout=BODY_TIMEOUT * 0.75)
    try:
        r = c.response(timeout=BODY_TIMEOUT + 8)
    except TimeoutError:
        r = None
    closed = c.wait_closed(3)
    c.close()
    assert_error(r, 408)
    assert time.monotonic() - t0 >= BODY_TIMEOUT * 0.5
    assert closed, "the connection stayed open after 408"
    assert d.seen("one", m) == [], "a partial body reached the worker"
    victim(d, "one")
    assert d.status("one")["inflight"] == 0


def test_sha_of_large_chunked_upload(d):
    m = uid()
    body = os.urandom(900 * 1024)
    pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)]
    r, c = exchange(d.port, post(m, [("Transfer-Encoding", "chunked")], chunked(*pieces)),
                    timeout=30)
    c.close()
    assert r.json()["body_sha256"] == sha(body)
    assert_well_framed(one_done(d, "raw", f"/{m}"), len(body))
