"""Leases over HTTP as capabilities, abandoned requests, slow uploads (issue
11): lease ids are unguessable tokens that reach only leases made over HTTP;
ttl and timeout are range-checked, a default TTL applies, expired leases are
gone; a client that leaves while queued leaves the queue and its request
never reaches the worker; a client trickling a body holds no model slot,
and with request_buffering: false a body under min_body_rate is cut with 408
and the lease released."""
import datetime
import os
import re
import select
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from frontdoor import (SLOW, Background, Daemon, assert_error, assert_well_framed,  # noqa: E402
                       build, config, echo_of, exchange, raw_model, uid)

CFG = config([raw_model("raw", max_concurrency=64),
              raw_model("one", max_concurrency=1, max_queue=8),
              raw_model("stream", max_concurrency=1, request_buffering="false")],
             limits={"max_body_size": "8MiB", "body_timeout": "3s", "min_body_rate": "1KiB",
                     "header_timeout": "5s", "idle_timeout": "30s"})


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CFG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def acquire(d, model, body):
    return d.post(f"/api/models/{model}/acquire", body)


def when(text):
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def is_token(lease):
    """At least 128 bits: 32+ hex digits (or 22+ base64url characters)."""
    return isinstance(lease, str) and (re.fullmatch(r"[0-9a-fA-F]{32,}", lease) is not None or
                                       re.fullmatch(r"[A-Za-z0-9_-]{22,}", lease) is not None
                                       and not lease.isdigit())


def test_lease_ids_are_unguessable_tokens(d):
    ids = []
    for _ in range(3):
        code, l, _ = acquire(d, "raw", {"ttl": "30s"})
        assert code == 200, l
        ids.append(l["lease"])
    try:
        for lease in ids:
            assert is_token(lease), f"lease id {lease!r} is not a 128-bit token"
        assert len(set(ids)) == 3
        if all(re.fullmatch(r"[0-9a-fA-F]+", x) for x in ids):
            a, b = int(ids[0], 16), int(ids[1], 16)
            assert abs(b - a) > 1 << 32, f"consecutive ids look sequential: {ids}"
    finally:
        for lease in ids:
            d.request("DELETE", f"/api/leases/{lease}")
    d.wait_until("raw", lambda s: s["inflight"] == 0)


def guesses(own):
    out = [str(i) for i in range(0, 128)] + ["-1", "18446744073709551615", own + "0",
                                              own[:-1], "0" * len(own)]
    if re.fullmatch(r"[0-9a-fA-F]+", own):
        v = int(own, 16)
        for delta in (-2, -1, 1, 2):
            out.append(format((v + delta) % (1 << (4 * len(own))), f"0{len(own)}x"))
    elif own.isdigit():
        out += [str(int(own) + k) for k in range(-20, 21) if k]
    return out


def test_guessed_lease_ids_reach_nothing_not_even_proxied_requests(d):
    """While a proxied request holds its (internal) lease, DELETE of every
    small number and of the neighbours of an HTTP lease id answers 404, and
    the proxied request finishes with 200."""
    busy = Background(d.get, "/m/one/slow?ms=2000")
    d.wait_until("one", lambda s: s["inflight"] == 1)
    code, own, _ = acquire(d, "raw", {"ttl": "30s"})
    assert code == 200
    hits = []
    for g in guesses(own["lease"]):
        code, _, _ = d.request("DELETE", f"/api/leases/{g}")
        if code != 404:
            hits.append((g, code))
        code, _, _ = d.post(f"/api/leases/{g}/renew", {"ttl": "30s"})
        if code not in (404, 400):
            hits.append(("renew " + g, code))
    code, doc, _ = busy.join()
    assert hits == [], f"guessed lease ids reached leases: {hits}"
    assert code == 200, f"the proxied request lost its lease: {code} {doc}"
    assert d.request("DELETE", f"/api/leases/{own['lease']}")[0] == 200
    d.wait_until("raw", lambda s: s["inflight"] == 0)


def test_ttl_default_and_range(d):
    t0 = time.time()
    code, l, _ = acquire(d, "raw", {})
    assert code == 200, l
    try:
        assert l.get("expires_at"), "a lease without ttl has no expiry"
        left = when(l["expires_at"]) - t0
        assert 50 <= left <= 70, f"default TTL is {left:.0f} s, not 60 s"
    finally:
        assert d.request("DELETE", f"/api/leases/{l['lease']}")[0] == 200
    d.wait_until("raw", lambda s: s["inflight"] == 0)
    for bad in (0, "0s", "0", -1, "-5s", 1e-9, "1e-9s", 1e30, "1e30", "forever", "abc", True,
                [5]):
        code, doc, _ = acquire(d, "raw", {"ttl": bad})
        assert code == 400, (bad, code, doc)
        assert "ttl" in doc["error"]["message"], (bad, doc)
    assert d.status("raw")["inflight"] == 0, "a refused acquire kept a lease"
    code, l, _ = acquire(d, "raw", {"ttl": 1.5})
    assert code == 200 and 0.5 <= when(l["expires_at"]) - time.time() <= 3, l
    d.request("DELETE", f"/api/leases/{l['lease']}")


def test_renew_range_and_expired_leases_are_gone(d):
    code, l, _ = acquire(d, "raw", {"ttl": "30s"})
    assert code == 200
    lid = l["lease"]
    for bad in (0, "0s", -1, "-1s", 1e30):
        code, doc, _ = d.post(f"/api/leases/{lid}/renew", {"ttl": bad})
        assert code == 400 and "ttl" in doc["error"]["message"], (bad, code, doc)
    code, r, _ = d.post(f"/api/leases/{lid}/renew", {"ttl": "20s"})
    assert code == 200 and 15 <= when(r["expires_at"]) - time.time() <= 25, r
    assert d.request("DELETE", f"/api/leases/{lid}")[0] == 200
    assert d.request("DELETE", f"/api/leases/{lid}")[0] == 404
    assert d.post(f"/api/leases/{lid}/renew", {"ttl": "5s"})[0] == 404
    # Expiry: gone for renew and delete.
    code, l, _ = acquire(d, "raw", {"ttl": "1s"})
    assert code == 200
    d.wait_until("raw", lambda s: s["inflight"] == 0, timeout=10)
    assert d.post(f"/api/leases/{l['lease']}/renew", {"ttl": "5s"})[0] == 404
    assert d.request("DELETE", f"/api/leases/{l['lease']}")[0] == 404


def test_acquire_timeout_and_priority_range(d):
    for body, field in (({"timeout": 0}, "timeout"), ({"timeout": "0s"}, "timeout"),
                        ({"timeout": -5}, "timeout"), ({"timeout": 1e30}, "timeout"),
                        ({"priority": 99999999999999}, "priority"),
                        ({"priority": "high"}, "priority"), ({"priority": 1.5}, "priority")):
        code, doc, _ = acquire(d, "raw", body)
        assert code == 400 and field in doc["error"]["message"], (body, code, doc)
    assert d.status("raw")["inflight"] == 0
    code, l, _ = acquire(d, "raw", {"timeout": "5s", "ttl": "5s", "priority": -1000000})
    assert code == 200, l
    d.request("DELETE", f"/api/leases/{l['lease']}")


def test_client_that_leaves_the_queue_leaves_it(d):
    busy = Background(d.get, "/m/one/slow?ms=4000")
    d.wait_until("one", lambda s: s["inflight"] == 1)
    m = uid()
    c = d.connect()
    c.send(build("GET", f"/m/one/{m}"))
    d.wait_until("one", lambda s: s["queued"] == 1)
    t0 = time.monotonic()
    c.close()
    st = d.wait_until("one", lambda s: s["queued"] == 0, timeout=3)
    left = time.monotonic() - t0
    assert st["inflight"] == 1, "the busy request should still be running"
    assert left < 1.0 * SLOW, f"the queue kept the gone client {left:.1f} s"
    assert busy.join()[0] == 200
    # A later request on the one slot: the gone one would have gone first.
    r, c2 = exchange(d.port, build("GET", f"/m/one/after-{m}"))
    c2.close()
    echo_of(r, f"/after-{m}")
    assert d.seen("one", "/" + m) == [], "a request whose client left reached the worker"


def test_slow_upload_holds_no_slot(d):
    """A body trickled one byte every 250 ms to a one-slot model: others are
    served meanwhile and the model's inflight stays 0 until it is all in."""
    m = uid()
    body = b"slow-upload!"
    c = d.connect(timeout=30)
    c.send(build("POST", f"/m/one/{m}", [("Content-Length", str(len(body)))], length=False))
    served, inflight = 0, []
    try:
        for i, byte in enumerate(body):
            inflight.append(d.status("one")["inflight"])  # the body is not all in yet
            c.send(bytes([byte]))
            if i % 3 == 0:
                r, c2 = exchange(d.port, build("GET", f"/m/one/other-{m}-{i}"), timeout=2)
                c2.close()
                assert r is not None and r.status == 200, f"another client got {r!r}"
                served += 1
            time.sleep(0.25)
        echo_of(c.response(timeout=10), f"/{m}", body)
    finally:
        c.close()
    assert inflight == [0] * len(body), f"the trickling client held the model: {inflight}"
    assert served == 4
    (rec,) = d.seen("one", "/" + m, phases=("done",))
    assert_well_framed(rec, len(body))


def test_unbuffered_upload_under_min_rate_cut_with_408(d):
    """request_buffering: false streams the body; 100 B every 0.5 s (under
    min_body_rate 1KiB/s over 10 s, each read well inside body_timeout) is
    cut with 408 and the model's lease released."""
    # A fast upload streams through whole.
    m = uid()
    body = os.urandom(200 * 1024)
    r, c = exchange(d.port, build("POST", f"/m/stream/{m}", body=body), timeout=20)
    c.close()
    echo_of(r, f"/{m}", body)
    d.wait_until("stream", lambda s: s["inflight"] == 0)
    m = uid()
    c = d.connect(timeout=60)
    c.send(build("POST", f"/m/stream/{m}", [("Content-Length", str(1 << 20))], length=False))
    t0 = time.monotonic()
    r = None
    while time.monotonic() - t0 < 30 * SLOW:
        ready, _, _ = select.select([c.sock], [], [], 0.5)
        if ready or not c.try_send(b"s" * 100):
            try:
                r = c.response(timeout=5)
            except TimeoutError:
                r = None
            break
    elapsed = time.monotonic() - t0
    closed = c.wait_closed(3)
    c.close()
    assert r is not None, f"the slow body was never cut ({elapsed:.0f} s)"
    assert_error(r, 408)
    assert closed
    d.wait_until("stream", lambda s: s["inflight"] == 0, timeout=5)
    r, c = exchange(d.port, build("GET", f"/m/stream/after-{m}"), timeout=10)
    c.close()
    echo_of(r, f"/after-{m}")
