"""30 s of clients alternating between two models that are each bigger than
half the device's budget, while a killer sends SIGKILL to their workers at
random while they serve: every request is answered (200, or 502 for one that ran on a killed
worker, or cut short when the kill came between its headers and its body), the budget is never exceeded (by the core's accounting, and by
the processes themselves: never both workers alive at once), and no worker
process is left afterwards."""
import http.client
import os
import random
import signal
import threading
import time

from test_daemon import SLOW, Daemon, worker, workers_alive

MiB = 1 << 20
DURATION_S = 30


def test_clients_and_random_kills():
    d = Daemon(f"""
devices: [{{host: true, budget: 256MiB}}]
defaults: {{keep_alive: 5m, start_timeout: 30s, queue_timeout: 5m}}
models:
  a:
    cmd: {worker("--alloc-mb", "140")}
    vram: 150MiB
    crash_limit: 0
  b:
    cmd: {worker("--alloc-mb", "140")}
    vram: 150MiB
    crash_limit: 0
""")
    stop = threading.Event()
    codes, bad, pids_seen, violations, why502, kills = {}, [], set(), [], {}, []
    lock = threading.Lock()

    def client(k):
        rnd = random.Random(k)
        i = 0
        while not stop.is_set():
            name = "ab"[(i + k) % 2]
            i += 1
            try:
                code, body, _ = d.post(f"/m/{name}/infer", {"i": i}, timeout=120)
            except http.client.IncompleteRead as e:
                # Killed after its headers were sent: the answer ends short,
                # as with any proxy (a request that ran on a killed worker).
                code, body = "cut short", repr(e)
            except (OSError, http.client.HTTPException) as e:  # no answer: a failure
                code, body = None, repr(e)
            with lock:
                codes[code] = codes.get(code, 0) + 1
                if code not in (200, 502, "cut short"):
                    bad.append((name, code, body))
                if code == 200:
                    pids_seen.add(body["pid"])
                if code == 502:
                    msg = body["error"]["message"][:60]
                    why502[msg] = why502.get(msg, 0) + 1
            time.sleep(rnd.uniform(0, 0.05))

    def killer():
        rnd = random.Random(7)
        while not stop.wait(rnd.uniform(0.3, 1.0)):
            # A worker that serves (a kill during its start fails the load,
            # which test_supervision covers with start_timeout and cancel):
            # the next one seen ready.
            while not stop.is_set():
                ready = [st for st in (d.status("a"), d.status("b"))
                         if st["pid"] and st["state"] == "ready"]
                if ready:
                    break
                time.sleep(0.01)
            if stop.is_set():
                break
            pid = rnd.choice(ready)["pid"]
            with lock:
                pids_seen.add(pid)
                kills.append(pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def watcher():
        while not stop.wait(0.05):
            code, doc, _ = d.get("/api/devices")
            dev = doc["devices"][0]
            if dev["used_bytes"] > dev["usable_bytes"]:
                violations.append(("accounting", dev))
            with lock:
                seen = list(pids_seen)
            # Both are bigger than half the budget: never two alive at once.
            for s in (d.status("a"), d.status("b")):
                if s["pid"]:
                    seen.append(s["pid"])
            alive = [p for p in workers_alive(set(seen)) if is_test_worker(p)]
            if len(alive) > 1:
                violations.append(("two workers alive", alive))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(3)]
    threads += [threading.Thread(target=killer), threading.Thread(target=watcher)]
    try:
        for t in threads:
            t.start()
        time.sleep(DURATION_S)  # the length of the run, not a wait for something
    finally:
        stop.set()
        for t in threads:
            t.join(180 * SLOW)
        ok = d.stop() == 0
    total = sum(codes.values())
    assert ok, d.logs()[-3000:]
    assert bad == [], (bad[:5], codes)
    assert codes.get(200, 0) > 20 and total > 20, codes
    assert violations == [], violations[:5]
    print("answers:", codes, why502, "kills:", len(kills))
    crashes = d.logs().count('msg="model lost"')
    assert len(kills) >= 10 and crashes >= 10, (len(kills), crashes, codes)
    # A 502 is a request that ran on a killed worker (or was given one in the
    # instant between its death and the core's learning of it): at most the
    # one in flight (max_concurrency 1) and that one, per kill.
    assert all(m.startswith(("worker failed: ", "the worker is not running")) for m in why502), why502
    assert codes.get(502, 0) + codes.get("cut short", 0) <= 2 * len(kills), (codes, why502)
    # Nothing of any worker is left.
    assert [p for p in workers_alive(pids_seen) if is_test_worker(p)] == []


def is_test_worker(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"test_worker.py" in f.read()
    except OSError:
        return False
