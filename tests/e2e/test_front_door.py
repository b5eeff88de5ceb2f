"""modelbufd's front door against hostile clients (issue 11): the request
line and header rules, header limits, hop-by-hop and control headers,
Expect, exact forwarding of the target, the OpenAI routes, the worker's
malformed answers, edge values of every client-given number, HEAD, the
keep-alive idle timeout and Last-Event-ID. Raw sockets on one side, the
raw worker (workers/raw_worker.py, which records every request it gets)
on the other: each rejected request must be answered with the right status
and never reach the worker."""
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frontdoor import (Background, Daemon, assert_error, assert_well_framed,  # noqa: E402
                       build, config, echo_of, exchange, raw_model, sha, uid, wait_for)

HEADER_LIMIT = 4096
CFG = config([
    raw_model("raw", max_concurrency=8,
              hooks="{offload: {path: /offload}, restore: {path: /restore}}"),
    raw_model("one", max_concurrency=1, max_queue=8),
    raw_model("bad", max_concurrency=4),
    raw_model("crashy"),
], limits={"max_header_size": "4KiB", "max_body_size": "1MiB", "header_timeout": "3s",
           "idle_timeout": "2s", "body_timeout": "3s"},
   extra="openai_routes: [/v1/extra]\n")


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CFG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def rejected(d, data, status, marker, *keywords, model="raw"):
    """data on its own connection gets status (a JSON error naming one of
    keywords) and nothing with marker reaches the worker."""
    r, c = exchange(d.port, data, timeout=5)
    c.close()
    assert_error(r, status, *keywords)
    # A request that got through would be at the worker by the time a later
    # one on the same model has been answered.
    r2, c2 = exchange(d.port, build("GET", f"/m/{model}/barrier"))
    c2.close()
    assert r2 is not None and r2.status == 200, r2
    assert d.seen(model, marker) == [], f"{marker} reached the worker"
    return r


def one_record(d, model, target):
    """The single request the worker got for target (exactly once)."""
    recs = wait_for(lambda: [r for r in d.records(model) if r["target"] == target], 2)
    assert len(recs) == 1, f"{target} reached the worker {len(recs)} times"
    return recs[0]


# --- the harness works ----------------------------------------------------
def test_plain_requests_reach_the_raw_worker_once_and_well_framed(d):
    m = uid()
    body = b'{"input": "hello"}'
    r, c = exchange(d.port, build("POST", f"/m/raw/{m}?q=1", [("Content-Type",
                                                              "application/json")], body))
    echo_of(r, f"/{m}?q=1", body)
    assert r.framing == "content-length" and r.complete
    assert_well_framed(one_record(d, "raw", f"/{m}?q=1"), len(body))
    # The same connection, again (keep-alive), then HEAD and GET.
    c.send(build("GET", f"/m/raw/{m}-2"))
    echo_of(c.response(), f"/{m}-2")
    c.send(build("HEAD", f"/m/raw/{m}-3"))
    r = c.response(head=True)
    assert r.status == 200 and r.body == b""
    assert one_record(d, "raw", f"/{m}-3")["method"] == "HEAD"
    c.close()


def test_streams_and_large_answers_pass_whole(d):
    r, c = exchange(d.port, build("GET", "/m/raw/sse?n=4&ms=30"))
    c.close()
    assert r.status == 200 and r.header("Content-Type") == "text/event-stream"
    assert r.complete and r.body.count(b"data: ") == 4
    n = 3 * 1024 * 1024 + 17
    r, c = exchange(d.port, build("GET", f"/m/raw/big?bytes={n}"), timeout=30)
    c.close()
    assert r.status == 200 and r.complete and len(r.body) == n
    assert sha(r.body) == sha((bytes(range(256)) * (n // 256 + 1))[:n])


# --- request line ----------------------------------------------------------
REQUEST_LINE = [
    ("bad method char", b"G(T /m/raw/{m} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("method with @", b"GE@T /m/raw/{m} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("two spaces", b"GET  /m/raw/{m} HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("space in target", b"GET /m/raw/{m} x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("missing version", b"GET /m/raw/{m}\r\nHost: t\r\n\r\n", 400),
    ("CTL in target", b"GET /m/raw/{m}\x01x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("DEL in target", b"GET /m/raw/{m}\x7fx HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("hash in target", b"GET /m/raw/{m}#frag HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("byte >= 0x80 in target", b"GET /m/raw/{m}\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("bad % escape", b"GET /m/raw/{m}%zz HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("short % escape", b"GET /m/raw/{m}%4 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("% at the end", b"GET /m/raw/{m}% HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("bad % escape in query", b"GET /m/raw/{m}?a=%g0 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    ("HTTP/2.0", b"GET /m/raw/{m} HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("HTTP/1.2", b"GET /m/raw/{m} HTTP/1.2\r\nHost: t\r\n\r\n", 505),
    ("HTTP/0.9", b"GET /m/raw/{m} HTTP/0.9\r\nHost: t\r\n\r\n", 505),
]


@pytest.mark.parametrize("name,data,status", REQUEST_LINE, ids=[c[0] for c in REQUEST_LINE])
def test_request_line_rejected(d, name, data, status):
    m = uid()
    rejected(d, data.replace(b"{m}", m.encode()), status, m)


HEADERS = [
    ("bare CR in a value", b"X-A: a\rAuthorization: Bearer {m}\r\n"),
    ("bare CR injecting X-Modelbuf", b"X-A: a\rX-Modelbuf-Priority: 1000 {m}\r\n"),
    ("bare LF line end", b"X-A: 1\nX-{m}: 2\r\n"),
    ("NUL in a value", b"X-A: a\x00{m}\r\n"),
    ("CTL in a value", b"X-A: a\x01{m}\r\n"),
    ("DEL in a value", b"X-A: a\x7f{m}\r\n"),
    ("CTL in a name", b"X-\x01A: {m}\r\n"),
    ("obs-fold with SP", b"X-A: 1\r\n X-Folded-{m}: 2\r\n"),
    ("obs-fold with HTAB", b"X-A: 1\r\n\tX-Folded-{m}: 2\r\n"),
    ("space before the colon", b"X-{m} : 1\r\n"),
    ("tab before the colon", b"X-{m}\t: 1\r\n"),
]


@pytest.mark.parametrize("name,line", HEADERS, ids=[c[0] for c in HEADERS])
def test_bad_header_line_rejected(d, name, line):
    m = uid()
    data = b"GET /m/raw/%s HTTP/1.1\r\nHost: t\r\n%s\r\n" % (m.encode(),
                                                              line.replace(b"{m}", m.encode()))
    rejected(d, data, 400, m)


def test_host_required_once_in_http11(d):
    m = uid()
    rejected(d, b"GET /m/raw/%s HTTP/1.1\r\nX-A: 1\r\n\r\n" % m.encode(), 400, m, "Host")
    m = uid()
    rejected(d, b"GET /m/raw/%s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n" % m.encode(), 400, m,
             "Host")
    # HTTP/1.0 needs none; a tab inside a value is fine and kept.
    m = uid()
    r, c = exchange(d.port, b"GET /m/raw/%s HTTP/1.0\r\nX-Tab: a\tb\r\n\r\n" % m.encode())
    c.close()
    echo_of(r, f"/{m}")
    rec = one_record(d, "raw", f"/{m}")
    assert ["X-Tab", "a\tb"] in rec["headers"] and rec["violations"] == []


# --- header limits ---------------------------------------------------------
def padded(target, total):
    """A GET whose whole header block (request line through the final empty
    line) is exactly total bytes."""
    head = f"GET {target} HTTP/1.1\r\nHost: t\r\nX-Pad: ".encode()
    pad = total - len(head) - 4
    return head + b"p" * pad + b"\r\n\r\n"


def test_header_block_limit_is_exact(d):
    """max_header_size counts the header block from the request line's first
    byte through the CRLF of the empty line that ends it."""
    m = uid()
    data = padded(f"/m/raw/{m}", HEADER_LIMIT)
    assert len(data) == HEADER_LIMIT
    r, c = exchange(d.port, data)
    c.close()
    echo_of(r, f"/{m}")
    m = uid()
    rejected(d, padded(f"/m/raw/{m}", HEADER_LIMIT + 1), 431, m)
    m = uid()
    rejected(d, padded(f"/m/raw/{m}", 2 * HEADER_LIMIT - 10), 431, m)


def test_request_line_over_the_limit_is_414(d):
    m = uid()
    target = f"/m/raw/{m}?" + "a" * (HEADER_LIMIT + 10)
    rejected(d, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 414, m)


def test_more_than_100_fields_is_431(d):
    m = uid()
    fields = [(f"X-F{i}", "1") for i in range(99)]  # + Host: 100 fields
    r, c = exchange(d.port, build("GET", f"/m/raw/{m}", fields))
    c.close()
    echo_of(r, f"/{m}")
    m = uid()
    rejected(d, build("GET", f"/m/raw/{m}", fields + [("X-F99", "1")]), 431, m)


# --- what is forwarded -----------------------------------------------------
def test_hop_by_hop_and_control_headers_dropped_others_kept(d):
    m = uid()
    body = b'{"k": 1}'
    dropped = [("Connection", f"keep-alive, X-Named-{m}, x-also-{m}"),
               (f"X-Named-{m}", "secret"), (f"X-Also-{m}", "secret2"),
               ("Keep-Alive", "timeout=5"), ("Proxy-Connection", "keep-alive"),
               ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "h2c"),
               ("Proxy-Authorization", "Basic Zm9vOmJhcg=="), ("X-Modelbuf-Priority", "3"),
               ("X-Modelbuf-Keep-Alive", "10m"), ("X-Modelbuf-Queue-Timeout", "30s"),
               ("X-Modelbuf-Trace", "z")]
    kept = [("X-Keep", "a  b ,c;q=1"), ("User-Agent", "frontdoor-test/1"), ("Accept", "*/*"),
            ("X-Dup", "one"), ("X-Dup", "two"), ("Content-Type", "application/json"),
            ("Cookie", "a=b; c=d"), ("Authorization", "Bearer for-the-worker")]
    r, c = exchange(d.port, build("POST", f"/m/raw/{m}", dropped + kept, body))
    c.close()
    echo_of(r, f"/{m}", body)
    rec = one_record(d, "raw", f"/{m}")
    assert_well_framed(rec, len(body))
    names = [n.lower() for n, _ in rec["headers"]]
    for n, _ in dropped:
        assert n.lower() not in names, f"{n} was forwarded: {rec['headers']}"
    assert not [n for n in names if n.startswith("x-modelbuf-")], rec["headers"]
    for n, _ in set(kept):
        got = [v for k, v in rec["headers"] if k.lower() == n.lower()]
        assert got == [v for k, v in kept if k == n], (n, got)


def test_expect_100_continue_only_after_the_checks(d):
    m = uid()
    c = d.connect()
    c.send(build("POST", f"/m/raw/{m}", [("Content-Length", "5"), ("Expect", "100-continue")]))
    r = c.response(stop_at_interim=True, timeout=5)
    assert r is not None and r.status == 100, r
    c.send(b"hello")
    echo_of(c.response(), f"/{m}", b"hello")
    c.close()
    assert_well_framed(one_record(d, "raw", f"/{m}"), 5)
    # Routing, then size: the answer comes at once, no 100 before it.
    for target, cl, status in (("/m/nope/x", "5", 404), ("/no/such/route", "5", 404),
                               (f"/m/raw/{uid()}", str(10 << 20), 413)):
        c = d.connect()
        c.send(build("POST", target, [("Content-Length", cl), ("Expect", "100-continue")]))
        try:
            r = c.response(stop_at_interim=True, timeout=5)
        except TimeoutError:
            r = None
        c.close()
        assert r is not None and r.status == status, (target, r)


def test_expect_other_than_100_continue_is_417(d):
    m = uid()
    rejected(d, build("POST", f"/m/raw/{m}", [("Expect", "something-else")], b"hello"), 417, m)


FORWARD = [
    ("/m/raw/x%23frag?q=1", "/x%23frag?q=1"),
    ("/m/raw/x%3Fq=2", "/x%3Fq=2"),
    ("/m/raw/a%00b", "/a%00b"),
    ("/m/raw/a%0d%0ab", "/a%0d%0ab"),
    ("/m/raw", "/"),
    ("/m/raw?a=b", "/?a=b"),
    ("/m/raw/a//b%2Fc%25?x=%20&y=a+b&z=%2F", "/a//b%2Fc%25?x=%20&y=a+b&z=%2F"),
    ("/m/raw/a/./b/../c", "/a/./b/../c"),
]


@pytest.mark.parametrize("target,upstream", FORWARD, ids=[f[0] for f in FORWARD])
def test_target_forwarded_byte_for_byte(d, target, upstream):
    m = uid()
    sep = "&" if "?" in upstream else "?"
    r, c = exchange(d.port, build("GET", f"{target}{sep}m={m}"))
    c.close()
    echo_of(r, f"{upstream}{sep}m={m}")
    one_record(d, "raw", f"{upstream}{sep}m={m}")


def test_illegal_target_is_400_not_a_worker_failure(d):
    before = d.fivexx("raw")
    for raw in (b"/m/raw/a b", b"/m/raw/a\r\nX: y", b"/m/raw/a\x00b", b"/m/raw/%zz"):
        m = uid().encode()
        r, c = exchange(d.port, b"GET " + raw + m + b" HTTP/1.1\r\nHost: t\r\n\r\n", timeout=5)
        c.close()
        assert r is not None and r.status == 400, (raw, r)
        assert d.seen("raw", m.decode()) == []
    assert d.fivexx("raw") == before


def test_dot_segments_never_route(d):
    m = uid()
    rejected(d, build("POST", f"/v1/../m/raw/{m}", body=b'{"model": "raw"}'), 404, m)
    m = uid()
    rejected(d, build("POST", f"/v1/chat/../../m/raw/{m}", body=b'{"model": "raw"}'), 404, m)


OPENAI = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
          "/v1/moderations", "/v1/rerank", "/v1/images/generations", "/v1/images/edits",
          "/v1/images/variations", "/v1/audio/transcriptions", "/v1/audio/translations",
          "/v1/audio/speech", "/v1/extra"]


def test_only_documented_openai_routes_are_routed_by_body(d):
    for route in OPENAI:
        body = ('{"model": "raw", "m": "%s"}' % uid()).encode()
        r, c = exchange(d.port, build("POST", route, [("Content-Type", "application/json")],
                                      body))
        c.close()
        echo_of(r, route, body)
    for route in ("/v1/unknown", "/v1/chat", "/v1/chat/completionsx",
                  "/v1/chat/completions/x", "/v1/extra/sub", "/v1/models/x"):
        m = uid()
        body = ('{"model": "raw", "m": "%s"}' % m).encode()
        rejected(d, build("POST", route, [("Content-Type", "application/json")], body), 404, m)


def multipart(boundary, parts):
    out = b""
    for headers, value in parts:
        out += b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_multipart_model_is_the_form_field_named_model(d):
    body = multipart(b"bnd", [
        (b'Content-Disposition: form-data; name="file"; filename="model"', b"nope-model"),
        (b'Content-Disposition: form-data; name="model"', b"raw"),
    ])
    hdr = [("Content-Type", "multipart/form-data; boundary=bnd")]
    r, c = exchange(d.port, build("POST", "/v1/audio/transcriptions", hdr, body))
    c.close()
    echo_of(r, "/v1/audio/transcriptions", body)
    # A part whose file name is "model" does not name the model.
    m = uid()
    body = multipart(b"bnd", [
        (b'Content-Disposition: form-data; name="upload"; filename="model"', b"raw"),
        (b'Content-Disposition: form-data; name="note"', m.encode()),
    ])
    rejected(d, build("POST", "/v1/audio/translations", hdr, body), 400, m)


# --- the worker's answers ----------------------------------------------------
BAD_ANSWERS = ["status/101", "status/999", "status/600", "status/099", "bad/garbage",
               "bad/status-line", "bad/clte", "bad/bare-cr", "bad/obs-fold", "bad/nul",
               "bad/two-cl"]


@pytest.mark.parametrize("path", BAD_ANSWERS)
def test_malformed_worker_answer_is_502(d, path):
    before = d.fivexx("bad")
    r, c = exchange(d.port, build("GET", f"/m/bad/{path}"), timeout=10)
    c.close()
    assert r is not None and r.status == 502, r
    assert r.header("X-Raw-Marker") is None and r.header("Set-Cookie") is None
    assert b"raw-bad-answer" not in r.body and b"raw-injected" not in r.head + r.body
    assert wait_for(lambda: d.fivexx("bad") == before + 1, 3), "not counted against the model"


@pytest.mark.parametrize("code", [100, 103])
def test_interim_answers_not_forwarded(d, code):
    m = uid()
    c = d.connect()
    c.send(build("GET", f"/m/raw/interim/{code}?m={m}"))
    r = c.response()
    c.close()
    assert r.interim == [], f"interim {r.interim} forwarded"
    echo_of(r, f"/interim/{code}?m={m}")


@pytest.mark.parametrize("kind", ["cut-cl", "cut-chunked", "cut-chunk-boundary",
                                  "bad-chunk-size"])
def test_worker_failure_mid_answer_never_looks_complete(d, kind):
    r, c = exchange(d.port, build("GET", f"/m/bad/bad/{kind}"), timeout=10)
    closed = c.wait_closed(5)
    c.close()
    if r is not None and r.status != 502:
        assert r.framing in ("content-length", "chunked"), \
            f"a close-delimited answer cannot tell a cut from an end: {r!r}"
        assert r.complete is False, f"a cut answer reached the client as a whole one: {r!r}"
        # Its framing tells the cut: a close, not a reset, which could
        # drop the head in the client's kernel before the client read it.
        assert not c.reset, f"a cut answer with a length or chunks ended with a reset: {r!r}"
    assert closed, "the connection stayed open after a cut answer"


@pytest.mark.parametrize("kind", ["cut-cl", "cut-chunked", "cut-chunk-boundary"])
def test_worker_failure_mid_answer_to_an_http10_client_is_an_abort(d, kind):
    """No chunked encoding for HTTP/1.0: an answer without a length ends
    with the connection, so a failed one must end with a reset, not a FIN."""
    c = d.connect()
    c.send(f"GET /m/bad/bad/{kind} HTTP/1.0\r\n\r\n".encode())
    r = c.response(timeout=10)
    c.close()
    if r is None or r.status == 502:
        return
    if r.framing == "content-length":
        assert r.complete is False, r
    else:
        assert c.reset, f"a cut answer ended with a clean close: {r!r}"


def test_worker_crash_mid_request_is_502(d):
    r, c = exchange(d.port, build("POST", "/m/crashy/crash", body=b"x"), timeout=20)
    c.close()
    assert r is not None and r.status == 502, r


# --- edge values ---------------------------------------------------------------
def test_priority_header_range_checked(d):
    for v in ("99999999999999", "-99999999999999", "1000001", "-1000001", "abc", "1.5",
              "5 5", "0x10", "2147483648"):
        m = uid()
        rejected(d, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Priority", v)]), 400, m,
                 "X-Modelbuf-Priority")
    for v in ("1000000", "-1000000", "0", "7"):
        m = uid()
        r, c = exchange(d.port, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Priority", v)]))
        c.close()
        echo_of(r, f"/{m}")


def test_priority_minus_two_is_not_the_default(d):
    """-2 is inside -1000000..1000000: either refused with 400 naming the
    header, or a real priority -2 (after a waiting -1), never "the model's
    default" (0 here, which would go first)."""
    m = uid()
    r, c = exchange(d.port, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Priority", "-2")]))
    c.close()
    if r is not None and r.status == 400:
        assert_error(r, 400, "X-Modelbuf-Priority")
        return
    echo_of(r, f"/{m}")
    busy = Background(d.get, "/m/one/slow?ms=1500")
    d.wait_until("one", lambda s: s["inflight"] == 1)
    mb, mc = uid(), uid()
    low = Background(exchange, d.port, build("GET", f"/m/one/{mb}",
                                             [("X-Modelbuf-Priority", "-2")]))
    d.wait_until("one", lambda s: s["queued"] == 1)
    mid = Background(exchange, d.port, build("GET", f"/m/one/{mc}",
                                             [("X-Modelbuf-Priority", "-1")]))
    d.wait_until("one", lambda s: s["queued"] == 2)
    assert busy.join()[0] == 200
    for bg in (low, mid):
        r, c = bg.join()
        c.close()
        assert r.status == 200
    order = [r["target"] for r in d.records("one")]
    assert order.index(f"/{mc}") < order.index(f"/{mb}"), "-2 was served as the default"


def test_queue_timeout_must_be_positive(d):
    for v in ("0", "0s"):
        m = uid()
        rejected(d, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Queue-Timeout", v)]), 400, m,
                 "X-Modelbuf-Queue-Timeout")
    m = uid()
    r, c = exchange(d.port, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Queue-Timeout", "5s")]))
    c.close()
    echo_of(r, f"/{m}")


def test_negative_keep_alive_refused(d):
    for v in ("-5", "-5s"):
        m = uid()
        rejected(d, build("GET", f"/m/raw/{m}", [("X-Modelbuf-Keep-Alive", v)]), 400, m,
                 "X-Modelbuf-Keep-Alive")
    for route in ("/api/models/raw/keep-alive", "/api/models/raw/load"):
        for v in (-5, "-5s"):
            code, doc, _ = d.post(route, {"keep_alive": v})
            assert code == 400 and "keep_alive" in doc["error"]["message"], (route, v, doc)
    code, st, _ = d.post("/api/models/raw/keep-alive", {"keep_alive": -1})
    assert code == 200 and st["keep_alive_s"] == -1
    code, st, _ = d.post("/api/models/raw/keep-alive", {"keep_alive": "10m"})
    assert code == 200


def test_gpu_offload_refuses_malformed_bodies(d):
    code, st, _ = d.post("/api/models/raw/load")
    assert code == 200 and st["state"] == "ready"
    for body in (b'{"model": 5}', b'{"modle": "raw"}', b'{"model": "raw", "extra": 1}',
                 b"[]", b'"raw"', b"{not json", b'{"model": null}'):
        code, doc, _ = d.request("POST", "/api/gpu/offload", body=body,
                                 headers={"Content-Type": "application/json"})
        assert code == 400, (body, code, doc)
        assert d.status("raw")["state"] == "ready", f"{body!r} offloaded the model"
    code, doc, _ = d.post("/api/gpu/offload", {"model": "nope"})
    assert code == 404 and d.status("raw")["state"] == "ready"
    code, doc, _ = d.post("/api/gpu/offload", {"model": "raw"})
    assert code == 200 and d.status("raw")["state"] == "offloaded"
    assert d.post("/api/models/raw/load")[0] == 200


def test_head_on_get_routes(d):
    c = d.connect()
    for path in ("/health", "/metrics", "/api/models", "/api/models/raw", "/v1/models"):
        c.send(build("GET", path))
        g = c.response()
        assert g.status == 200 and g.body
        c.send(build("HEAD", path))
        h = c.response(head=True)
        assert h.status == 200, (path, h)
        assert h.header("Content-Type") == g.header("Content-Type")
        assert h.header("Content-Length") is not None or h.header("Transfer-Encoding")
        # No body came with it: the next answer on the connection parses.
        c.send(build("GET", "/health"))
        assert c.response().status == 200
    c.close()


def test_idle_keep_alive_connection_closed_after_idle_timeout(d):
    c = d.connect()
    c.send(build("GET", "/health"))
    assert c.response().status == 200
    t0 = time.monotonic()
    closed = c.wait_closed(2 + 5)
    c.close()
    assert closed, "an idle keep-alive connection was never closed"
    assert time.monotonic() - t0 > 1.0, "closed long before idle_timeout"


def test_last_event_id_never_kills_the_daemon():
    d = Daemon(config([raw_model("raw")]))
    try:
        streams = []
        for v in ("-1", "18446744073709551615", "18446744073709551616", "abc",
                  "99999999999999999999999", "", "0", "1"):
            c = d.connect()
            c.send(build("GET", "/api/events", [("Last-Event-ID", v)]))
            try:
                r = c.response(body=False, timeout=5)
            except TimeoutError:
                r = None
            assert r is not None and r.status in (200, 400), (v, r)
            streams.append(c)
        # Events flow to those streams (the crash was at the next event).
        assert d.post("/api/models/raw/load")[0] == 200
        assert d.post("/api/models/raw/unload")[0] == 200
        assert wait_for(lambda: d.running() and d.get("/health")[0] == 200, 2)
        for c in streams:
            c.close()
        assert d.running() and d.get("/health")[0] == 200
    finally:
        rc = d.stop()
    assert rc == 0, d.logs()[-3000:]
