"""The Python package (python/, `modelbuf`) end to end: installed offline
with pip from the source tree as a user would, then its client, leases
(use_model: renewal, release on exceptions, auto_unload, nesting, loss),
errors, events, the asyncio twin, the compat classes, and a FastAPI (and a
stdlib) worker built with modelbuf.worker offloaded and restored through
the daemon with its tensors checked equal. Real daemon, real workers."""
import asyncio
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import SLOW, Daemon, free_port, worker  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FASTAPI_WORKER = os.path.join(ROOT, "tests", "e2e", "workers", "fastapi_worker.py")
HOOKS = "{offload: {path: /offload}, restore: {path: /restore}}"


@pytest.fixture(scope="module")
def mb():
    """The package as `pip install ./python` puts it (Debian's setuptools,
    no index, no network), imported from there."""
    tmp = tempfile.mkdtemp(prefix="mb-python-")
    src = os.path.join(tmp, "src")
    shutil.copytree(os.path.join(ROOT, "python"), src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = os.path.join(tmp, "site")
    p = subprocess.run(["/usr/bin/python3", "-m", "pip", "install", "--no-build-isolation",
                        "--no-index", "--no-deps", "--disable-pip-version-check", "-q",
                        "--target", site, src], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    sys.path.insert(0, site)
    for name in [n for n in sys.modules if n == "modelbuf" or n.startswith("modelbuf.")]:
        del sys.modules[name]
    mod = importlib.import_module("modelbuf")
    assert mod.__file__.startswith(site), mod.__file__
    os.environ["MODELBUF_PYTHON_PATH"] = site  # for the workers that use it
    yield mod
    sys.path.remove(site)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def d(mb):
    sock = os.path.join(tempfile.mkdtemp(prefix="mb-py-sock-"), "mb.sock")
    daemon = Daemon(f"""devices: [{{host: true, budget: 1GiB}}]
unix_socket: {sock}
defaults: {{keep_alive: 10m, host_keep_alive: 10m}}
models:
  a:
    cmd: {worker("--alloc-mb", "8")}
    hooks: {HOOKS}
    aliases: [alias-a, org/a-model]
  plain:
    cmd: {worker()}
  brief:
    cmd: {worker()}
    keep_alive: 0
    offload: false
  one:
    cmd: {worker()}
    max_concurrency: 1
    max_queue: 0
  slow:
    cmd: {worker()}
    max_concurrency: 1
    queue_timeout: 30s
""")
    daemon.sock = sock
    yield daemon
    assert daemon.stop() == 0


def client(mb, d, **kw):
    return mb.Client(f"http://127.0.0.1:{d.port}", **kw)


def test_installs_offline_and_imports(mb):
    assert mb.__version__ == "0.1.0"
    for name in ("Client", "AsyncClient", "QueueFull", "Timeout", "NotFound", "WorkerFailed",
                 "LeaseLost"):
        assert hasattr(mb, name), name
    importlib.import_module("modelbuf.compat")
    importlib.import_module("modelbuf.worker")
    # Typed: the marker ships with it.
    assert os.path.exists(os.path.join(os.path.dirname(mb.__file__), "py.typed"))


def test_client_from_the_environment_and_over_a_unix_socket(mb, d, monkeypatch):
    monkeypatch.setenv("MODELBUF_URL", f"127.0.0.1:{d.port}")
    c = mb.Client()
    assert c.url == f"http://127.0.0.1:{d.port}"
    assert c.health()["status"] == "healthy"
    u = mb.Client("unix:" + d.sock)
    assert {m["name"] for m in u.models()} >= {"a", "plain", "brief"}
    monkeypatch.delenv("MODELBUF_URL")
    monkeypatch.setenv("MODELBUF_URLS", f"http://127.0.0.1:{d.port},http://127.0.0.1:1")
    assert mb.Client().url == f"http://127.0.0.1:{d.port}"
    with pytest.raises(mb.ConnectionFailed):
        mb.Client("http://127.0.0.1:1").health()


def test_model_actions(mb, d):
    c = client(mb, d)
    m = c.model("a")
    st = m.load(keep_alive="10m")
    assert st["state"] == "ready" and st["keep_alive_s"] == 600
    assert c.model("alias-a").status()["name"] == "a"
    assert c.model("org/a-model").status()["name"] == "a"  # a name with '/': %2F on the wire
    st = m.keep_alive(None)
    assert st["keep_alive_s"] == -1 and st["timer_active"] is False
    st = m.keep_alive(120)
    assert st["keep_alive_s"] == 120 and st["timer_active"] is True
    assert m.offload()["state"] == "offloaded"
    assert m.load()["state"] == "ready"
    assert "test_worker a starting" in m.logs(tail=50)
    assert m.unload()["state"] == "unloaded"
    assert isinstance(c.devices(), list) and "modelbuf_loads_total" in c.metrics()


def test_errors_carry_code_and_message(mb, d):
    c = client(mb, d)
    with pytest.raises(mb.NotFound) as e:
        c.model("nope").status()
    assert e.value.status == 404 and e.value.code == "not_found" and "nope" in e.value.message
    c.model("a").unload()
    with pytest.raises(mb.StateConflict) as e:  # not loaded
        c.model("a").offload()
    assert e.value.status == 409 and e.value.code == "state_conflict"
    c.model("plain").load()
    with pytest.raises(mb.NotSupported) as e:  # no hooks
        c.model("plain").offload()
    assert e.value.code == "not_supported" and isinstance(e.value, mb.Conflict)
    with pytest.raises(mb.BadRequest) as e:
        c.model("plain").keep_alive("-5s")
    assert "keep_alive" in e.value.message
    with pytest.raises(mb.BadRequest):
        with c.use_model("plain", priority=10 ** 9):
            pass


def test_queue_full_and_timeout(mb, d):
    c = client(mb, d)
    c.model("one").load()  # max_queue 0: even waiting for its load is refused
    with c.use_model("one"):
        # max_queue 0: a second user is refused at once.
        with pytest.raises(mb.QueueFull) as e:
            with client(mb, d).use_model("one"):  # another client: a lease of its own
                pass
        assert e.value.status == 503 and e.value.retry_after == 1
    with c.use_model("slow"):
        out = {}

        def other():
            try:
                with c.use_model("slow", timeout=0.3):
                    out["got"] = True
            except mb.ModelbufError as err:
                out["err"] = err

        t = threading.Thread(target=other)
        t.start()
        t.join(30 * SLOW)
        assert isinstance(out.get("err"), mb.Timeout), out
        assert out["err"].status == 504 and "queue" in out["err"].message


def test_use_model_renews_the_lease_across_a_shorter_keep_alive(mb, d):
    c = client(mb, d)
    c.model("brief").unload()
    # brief: keep_alive 0 -- unloaded the moment it is idle. The block takes
    # longer than the lease's ttl: the background renewal keeps it held.
    with c.use_model("brief", ttl=1) as m:
        assert m.model == "brief" and m.url.startswith("http://127.0.0.1:")
        pid = m.get("/health").json()
        for _ in range(5):
            time.sleep(0.5)
            st = c.model("brief").status()
            assert st["state"] == "ready" and st["inflight"] == 1, st
            assert m.post("/infer", json={"t": 1}).json()["echo"] == {"t": 1}
        assert m.renewals >= 2 and m.lost is None
        assert pid["status"] == "ok"
    # Released: keep_alive 0 unloads it now.
    d.wait_state("brief", ["unloaded"])
    # The same lease without renewal expires: the model goes under its holder.
    lease = c.acquire("brief", ttl=1)
    d.wait_state("brief", ["unloaded"], timeout=10)
    with pytest.raises(mb.LeaseLost) as e:
        lease.release()
    assert e.value.code == "lease_expired"


def test_release_on_exception_and_auto_unload(mb, d):
    c = client(mb, d)
    with pytest.raises(ValueError):
        with c.use_model("a") as m:
            assert c.model("a").status()["inflight"] == 1
            raise ValueError("boom")
    st = d.wait_until("a", lambda s: s["inflight"] == 0)
    assert st["state"] == "ready"  # released, not unloaded: its keep-alive decides
    with c.use_model("a", auto_unload=True) as m:
        assert m.post("/infer", json={}).status == 200
    assert c.model("a").status()["state"] == "unloaded"
    # auto_unload on an exception too.
    with pytest.raises(RuntimeError):
        with c.use_model("a", auto_unload=True):
            raise RuntimeError("x")
    assert c.model("a").status()["state"] == "unloaded"


def test_nesting_reuses_the_held_lease(mb, d):
    c = client(mb, d)
    # one: max_concurrency 1 and no queue: a second lease would be refused.
    c.model("one").load()
    with c.use_model("one") as outer:
        with c.use_model("one") as inner:
            assert inner is outer
            assert c.model("one").status()["inflight"] == 1
        assert c.model("one").status()["inflight"] == 1  # still held by the outer block
    d.wait_until("one", lambda s: s["inflight"] == 0)  # the release reaches the core
    # By alias, and auto_unload of an inner block applies at the outer end.
    with c.use_model("a") as outer:
        with c.use_model("alias-a", auto_unload=True) as inner:
            assert inner is outer
        assert c.model("a").status()["state"] == "ready"
    assert c.model("a").status()["state"] == "unloaded"


def test_threads_each_hold_their_own_lease(mb, d):
    c = client(mb, d)
    spans = []

    def use(i):
        with c.use_model("slow") as m:
            t0 = time.time()
            m.get("/slow?ms=300")
            spans.append((t0, time.time()))

    ts = [threading.Thread(target=use, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60 * SLOW)
    assert len(spans) == 3
    spans.sort()
    for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
        assert b0 >= a1 - 0.01, spans  # max_concurrency 1: one block at a time


def test_lease_lost_when_the_worker_dies(mb, d):
    c = client(mb, d)
    with pytest.raises(mb.LeaseLost) as e:
        with c.use_model("plain", ttl=2) as m:
            with pytest.raises(mb.ConnectionFailed):
                m.post("/crash", json={})
            deadline = time.time() + 20 * SLOW
            while m.lost is None and time.time() < deadline:
                time.sleep(0.05)
            assert m.lost is not None
    assert e.value.status == 410 and e.value.code == "lease_lost"


def test_requests_through_the_daemon_and_streams(mb, d):
    c = client(mb, d)
    m = c.model("a")
    r = m.post("/infer", json={"q": 1}, keep_alive="10m", priority=3)
    assert r.ok and r.json()["echo"] == {"q": 1} and float(r.headers["X-Modelbuf-Queue-Ms"]) >= 0
    assert m.url == f"http://127.0.0.1:{d.port}/m/a"
    r = m.get("/stream?n=3&ms=10", stream=True)
    with r:
        events = [ev.json() for ev in r.iter_events() if ev.data != "[DONE]"]
    assert [e["token"] for e in events] == [0, 1, 2]
    r = m.get("/missing")
    assert r.status == 404
    with pytest.raises(mb.NotFound):
        r.raise_for_status()
    with c.use_model("a") as lease:
        r = lease.get("/stream?n=2&ms=10", stream=True)
        assert [ln for ln in r.iter_lines() if ln.startswith("data:")][-1] == "data: [DONE]"
    # The OpenAI routes (the test worker echoes them).
    out = c.openai.chat("alias-a", [{"role": "user", "content": "hi"}])
    assert out["path"] == "/v1/chat/completions" and out["model"] == "a"
    assert {m["id"] for m in c.openai.models()} >= {"a", "alias-a", "org/a-model"}
    assert c.openai.model("org/a-model")["id"] == "org/a-model"


def test_events(mb, d):
    c = client(mb, d)
    c.model("plain").unload()
    seen = []
    it = c.events(model="plain").open()  # subscribed: what follows is seen

    def read():
        for ev in it:
            if ev["type"] == "state":
                seen.append(ev)
            if len(seen) == 2:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    c.model("plain").load()
    t.join(20 * SLOW)
    it.close()
    assert [(e["from"], e["to"]) for e in seen] == [("unloaded", "loading"), ("loading", "ready")]
    # Resumed after an event seen (Last-Event-ID): what came since, in order.
    c.model("plain").unload()
    again = c.events(model="plain", last_event_id=seen[-1]["seq"])
    nxt = [next(again), next(again)]
    again.close()
    assert [(e["from"], e["to"]) for e in nxt] == [("ready", "unloading"),
                                                   ("unloading", "unloaded")]
    assert seen[-1]["seq"] < nxt[0]["seq"] < nxt[1]["seq"]


def test_api_key(mb):
    d = Daemon(f"""api_keys: [s3cret]
devices: [{{host: true}}]
models:
  k:
    cmd: {worker()}
""")
    try:
        with pytest.raises(mb.Unauthorized):
            mb.Client(f"http://127.0.0.1:{d.port}", api_key="").models()
        assert mb.Client(f"http://127.0.0.1:{d.port}", api_key="s3cret").models()
        os.environ["MODELBUF_API_KEY"] = "s3cret"
        try:
            c = mb.Client(f"http://127.0.0.1:{d.port}")
            with c.use_model("k") as m:
                assert m.post("/infer", json={}).status == 200
        finally:
            del os.environ["MODELBUF_API_KEY"]
    finally:
        assert d.stop() == 0


def test_async_twin(mb, d):
    async def main():
        c = mb.AsyncClient(f"http://127.0.0.1:{d.port}")
        assert (await c.health())["status"] == "healthy"
        await c.model("brief").unload()
        # Renewal across the keep-alive of 0 and a ttl shorter than the block.
        async with c.use_model("brief", ttl=1) as m:
            for _ in range(4):
                await asyncio.sleep(0.5)
                st = await c.model("brief").status()
                assert st["state"] == "ready" and st["inflight"] == 1
            r = await m.post("/infer", json={"a": 1})
            assert r.json()["echo"] == {"a": 1}
            assert m.renewals >= 2
            # Nesting in the same task reuses it.
            async with c.use_model("brief") as inner:
                assert inner is m
        # Release on exception; auto_unload.
        with pytest.raises(KeyError):
            async with c.use_model("a"):
                raise KeyError("x")
        for _ in range(500):  # the release reaches the core
            if (await c.model("a").status())["inflight"] == 0:
                break
            await asyncio.sleep(0.02)
        assert (await c.model("a").status())["inflight"] == 0
        async with c.use_model("a", auto_unload=True) as m:
            r = await m.get("/stream?n=3&ms=10", stream=True)
            toks = [ev.json()["token"] async for ev in r.aiter_events() if ev.data != "[DONE]"]
            assert toks == [0, 1, 2]
        assert (await c.model("a").status())["state"] == "unloaded"
        with pytest.raises(mb.NotFound) as e:
            await c.model("nope").status()
        assert e.value.code == "not_found"
        # Through the daemon, and the OpenAI routes.
        r = await c.model("a").post("/infer", json={"z": 2})
        assert r.status == 200 and r.json()["echo"] == {"z": 2}
        out = await c.openai.chat("org/a-model", [])
        assert out["model"] == "a"
        # Events, as an async iterator.
        await c.model("plain").unload()

        async def two(evs):
            got = []
            async for ev in evs:
                if ev["type"] == "state":
                    got.append(ev["to"])
                if len(got) == 2:
                    return got
        async with c.events(model="plain") as evs:  # subscribed on entry
            task = asyncio.ensure_future(two(evs))
            await c.model("plain").load()
            assert await asyncio.wait_for(task, 20 * SLOW) == ["loading", "ready"]
            assert evs.last_event_id is not None
        # Over the Unix socket too.
        u = mb.AsyncClient("unix:" + d.sock)
        assert len(await u.models()) >= 3
        await u.aclose()
        await c.aclose()
    asyncio.run(main())


def test_compat_model_buffer_and_manager(mb, d):
    from modelbuf.compat import ModelBuffer, ModelManager
    c = client(mb, d)
    c.model("a").unload()
    buf = ModelBuffer("a", timeout=120, client=c)
    st = buf.get_status()
    assert st["is_loaded"] is False and st["loaded_at"] is None and st["timeout_seconds"] == 120
    assert set(st) >= {"is_loaded", "loaded_at", "last_accessed", "timeout_seconds",
                       "timer_active"}
    model = buf.get_model()
    assert buf.is_loaded
    st = buf.get_status()
    assert st["timeout_seconds"] == 120 and st["timer_active"] is True
    assert st["keep_alive_seconds"] == 120  # the daemon's keep-alive for this residency
    assert abs(st["loaded_at"] - time.time()) < 60 and st["model_location"] == "GPU"
    r = model.post("/infer", json={"x": 1})
    assert r.json()["echo"] == {"x": 1}
    last = buf.get_status()["last_accessed"]
    assert last >= st["loaded_at"]
    buf.cancel_timer()
    st = buf.get_status()
    assert st["timer_active"] is False and st["keep_alive_seconds"] is None
    buf.reset_timer()
    st = buf.get_status()
    assert st["timer_active"] is True and st["keep_alive_seconds"] == 120
    buf.unload_model()
    assert buf.get_status()["is_loaded"] is False
    mgr = ModelManager(client=c)
    with mgr.use_model("a") as m:
        assert m.post("/infer", json={}).status == 200
        assert mgr.get_status()["a"]["is_loaded"] is True
    with mgr.use_model("a", auto_unload=True):
        pass
    assert mgr.get_status()["a"]["is_loaded"] is False


@pytest.mark.parametrize("server", ["fastapi", "stdlib"])
def test_worker_helpers_offload_and_restore_through_the_daemon(mb, server):
    pytest.importorskip("torch")
    if server == "fastapi":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    port = free_port()
    args = ["/usr/bin/python3", FASTAPI_WORKER, "--port", "${PORT}", "--server", server]
    d = Daemon(f"""devices: [{{host: true}}]
models:
  fw:
    cmd: [{", ".join(json.dumps(x) for x in args)}]
    port: {port}
    start_timeout: 2m
    env: {{MODELBUF_PYTHON_PATH: "{os.environ['MODELBUF_PYTHON_PATH']}"}}
    hooks:
      offload: {{path: /offload}}
      restore: {{path: /restore}}
      cleanup: {{path: /cleanup}}
""")
    direct = f"http://127.0.0.1:{port}"

    def get(url):
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.loads(r.read())

    try:
        c = client(mb, d)
        x = [0.01 * i for i in range(256)]
        before = c.model("fw").post("/infer", json={"x": x}).json()["y"]
        t0 = c.model("fw").get("/tensors").json()
        assert t0["location"] == "device" and len(t0["digests"]) == 9
        assert t0["memory"]["device_bytes"] == t0["bytes"] > 256 * 256 * 4
        # Offloaded through the daemon: the worker's weights left its device.
        st = c.model("fw").offload()
        assert st["state"] == "offloaded"
        h = get(direct + "/health")
        assert h["status"] == "healthy" and h["location"] == "host"
        assert h["memory"]["device_bytes"] == 0 and h["memory"]["host_bytes"] >= t0["bytes"]
        assert h["stats"]["offloads"] == 1
        # The next request restores them; every tensor is as it was.
        t1 = c.model("fw").get("/tensors").json()
        assert t1["location"] == "device" and t1["digests"] == t0["digests"]
        assert t1["memory"]["device_bytes"] == t0["bytes"] and t1["memory"]["host_bytes"] == 0
        after = c.model("fw").post("/infer", json={"x": x}).json()["y"]
        assert after == before
        assert c.model("fw").status()["stats"]["restores"] == 1
        # The cleanup hook runs the worker's callbacks.
        out = c.cleanup()
        assert out["cleaned"] == ["fw"]
        assert c.model("fw").get("/tensors").json()["cleanups"] == 1
        # A bad request is the app's own answer, through the daemon.
        assert c.model("fw").post("/infer", json={"x": [1]}).status in (400, 422)
    finally:
        assert d.stop() == 0
