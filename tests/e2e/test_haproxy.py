"""The HAProxy recipe of docs/SCALE-OUT.md, for real: three modelbufd on
loopback (each its own node name and host-device budget) behind HAProxy
run from examples/haproxy/haproxy.cfg (its listen address, servers and
alias map filled in). Each model lands on one node, by its name in the
path or the OpenAI body's "model" (an alias counts as its model); a node
that dies gives up only its own models, which are served by another node
after a load there; back, it takes them again; server-sent events stream
through; a request without the API key gets the node's 401; and the
simulator's ring (modelbuf sim --route) names the nodes HAProxy chose. Skips only
where haproxy is not installed (scripts/deps.sh installs it)."""
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from test_daemon import BUILD, SLOW, Daemon, free_port, worker

HERE = os.path.dirname(os.path.abspath(__file__))
TOOL = os.path.join(BUILD, "cli", "modelbuf")
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "haproxy", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed "
                                "(scripts/deps.sh installs Debian's)")

KEY = "fleet-key-1"
AUTH = {"Authorization": "Bearer " + KEY}
# Twelve models and one with a '/' in its name; some have aliases.
MODELS = [f"m{i:02d}" for i in range(12)] + ["org/m"]
ALIASES = {"gpt-m00": "m00", "gpt-m05": "m05", "gpt-org": "org/m"}
NODES = ["n1", "n2", "n3"]


def config(node):
    lines = [f"node: {node}", f'api_keys: ["{KEY}"]',
             "devices: [{host: true, budget: 1GiB}]",
             "defaults: {keep_alive: 10m, queue_timeout: 60s}", "models:"]
    for m in MODELS:
        lines.append(f"  {json.dumps(m)}:")
        lines.append(f"    cmd: {worker()}")
        al = [a for a, n in ALIASES.items() if n == m]
        if al:
            lines.append(f"    aliases: {json.dumps(al)}")
    return "\n".join(lines) + "\n"


class HAProxy:
    """HAProxy in the foreground (-db) with the example's configuration,
    its EDIT places filled in, and a stats socket to see what it thinks of
    the nodes."""

    def __init__(self, ports):
        self.dir = tempfile.mkdtemp(prefix="mb-haproxy-")
        self.port = free_port()
        self.sock = os.path.join(self.dir, "admin.sock")
        amap = os.path.join(self.dir, "aliases.map")
        with open(amap, "w") as f:
            f.write("".join(f"{a} {n}\n" for a, n in ALIASES.items()))
        with open(EXAMPLE) as f:
            text = f.read()
        # The example must hold what the docs promise, as written.
        for need in ("option http-buffer-request", "json_query('$.model')",
                     "balance hdr(X-Modelbuf-Model)", "hash-type consistent",
                     "option httpchk GET /health", "option redispatch", "retries "):
            assert need in text, need
        text, n = re.subn(r"(?m)^    bind \S+$", f"    bind 127.0.0.1:{self.port}", text)
        assert n == 1
        servers = "".join(f"    server {name} 127.0.0.1:{p}\n" for name, p in zip(NODES, ports))
        text, n = re.subn(r"(?m)(^    server .*\n)+", servers, text)
        assert n == 1
        text = text.replace("/etc/haproxy/modelbuf-aliases.map", amap)
        text = text.replace("\nglobal\n", f"\nglobal\n    stats socket {self.sock} mode 600 level admin\n")
        self.cfg = os.path.join(self.dir, "haproxy.cfg")
        with open(self.cfg, "w") as f:
            f.write(text)
        check = subprocess.run([HAPROXY, "-c", "-f", self.cfg], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.log = open(os.path.join(self.dir, "haproxy.log"), "w+")
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", self.cfg], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def states(self):
        """{server: "UP" | "DOWN" | ...} from the stats socket."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.sock)
        s.sendall(b"show stat\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        rows = [ln.split(",") for ln in data.decode().splitlines() if ln and not ln.startswith("#")]
        return {r[1]: r[17] for r in rows if r[0] == "modelbuf_nodes" and r[1] in NODES}

    def wait_states(self, want, timeout=30):
        deadline = time.time() + timeout * SLOW
        got = None
        while time.time() < deadline:
            assert self.proc.poll() is None, self.logs()
            try:
                got = self.states()
                if all(got.get(k, "").startswith(v) for k, v in want.items()):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"haproxy never saw {want}: {got}\n{self.logs()}")

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60 * SLOW)
        data = None if body is None else json.dumps(body).encode()
        c.request(method, path, body=data, headers=headers if headers is not None else AUTH)
        r = c.getresponse()
        raw = r.read()
        c.close()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = raw.decode(errors="replace")
        return r.status, doc, r

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def quoted(model):
    return model.replace("/", "%2F")


@pytest.fixture(scope="module")
def fleet():
    daemons = [Daemon(config(n)) for n in NODES]
    hp = HAProxy([d.port for d in daemons])
    try:
        hp.wait_states({n: "UP" for n in NODES})
        yield hp, daemons
    finally:
        hp.stop()
        for d in daemons:
            d.stop()


def node_of(hp, model):
    """Where a request for model lands: (node, its answer's load ms)."""
    code, body, r = hp.request("POST", f"/m/{quoted(model)}/infer", {"q": model})
    assert code == 200, (model, code, body)
    assert body["model"] == model and body["echo"] == {"q": model}
    return r.getheader("X-Modelbuf-Node"), float(r.getheader("X-Modelbuf-Load-Ms"))


def loaded_on(daemon):
    code, doc, hdr = daemon.get("/api/models", headers=AUTH)
    assert code == 200
    return {m["name"] for m in doc["models"] if m["state"] == "ready"}


def mapping(hp):
    return {m: node_of(hp, m)[0] for m in MODELS}


def ring(hp, n=600):
    """Where n names would land, read cheaply: GET /health with the name as
    the X-Modelbuf-Model hint (the recipe hashes it when nothing else names
    a model), so no model is loaded."""
    out = {}
    for i in range(n):
        code, doc, r = hp.request("GET", "/health", headers={"X-Modelbuf-Model": f"model-{i}"})
        assert code == 200
        out[f"model-{i}"] = doc["node"]
    return out


def test_each_model_lands_on_one_node(fleet):
    hp, daemons = fleet
    first = mapping(hp)
    assert set(first.values()) == set(NODES), first  # the set is spread over every node
    # The simulator's ring is HAProxy's: `modelbuf sim --nodes 3 --route`
    # names the same node for every model (servers in the order listed).
    p = subprocess.run([TOOL, "sim", "--nodes", "3", "--route", ",".join(MODELS)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert {ln.split()[0]: NODES[int(ln.split()[1]) - 1] for ln in p.stdout.splitlines()} == first
    for _ in range(2):
        assert mapping(hp) == first
    # Each node loaded its own models and no other.
    for name, d in zip(NODES, daemons):
        assert loaded_on(d) == {m for m, n in first.items() if n == name}, name
    # The management routes of a model reach its node too.
    for m in ("m03", "org/m"):
        code, st, r = hp.request("GET", f"/api/models/{quoted(m)}")
        assert code == 200 and st["state"] == "ready" and st["node"] == first[m], st


def test_openai_routes_by_the_body_and_streams(fleet):
    hp, daemons = fleet
    where = mapping(hp)
    for alias, model in ALIASES.items():
        for name in (alias, model):
            code, body, r = hp.request("POST", "/v1/chat/completions",
                                       {"model": name, "messages": [{"role": "user",
                                                                     "content": "hi"}]})
            assert code == 200 and body["path"] == "/v1/chat/completions", body
            assert r.getheader("X-Modelbuf-Node") == where[model], (name, model)
    # Streamed: the first event comes through before the worker may send the
    # rest (it waits for a file the test makes only after reading it), so
    # HAProxy and the daemon hold nothing back.
    gate = os.path.join(hp.dir, "gate")
    c = http.client.HTTPConnection("127.0.0.1", hp.port, timeout=60 * SLOW)
    c.request("POST", "/v1/chat/completions",
              body=json.dumps({"model": "gpt-m05", "stream": True, "max_tokens": 4,
                               "gate": gate, "messages": []}).encode(),
              headers=dict(AUTH, **{"Content-Type": "application/json"}))
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    assert r.getheader("X-Modelbuf-Node") == where["m05"]
    first = r.readline()
    assert first.startswith(b"data: ") and json.loads(first[6:])["choices"][0]["delta"] == \
        {"content": "tok0"}
    open(gate, "w").close()
    rest = r.read().decode()
    c.close()
    events = [ln[6:] for ln in rest.splitlines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]] == \
        ["tok1", "tok2", "tok3"]


def test_keyless_request_gets_the_nodes_401(fleet):
    hp, daemons = fleet
    for method, path, body in (("POST", "/m/m01/infer", {}), ("GET", "/api/models", None),
                               ("POST", "/v1/chat/completions", {"model": "gpt-m00"})):
        code, doc, r = hp.request(method, path, body, headers={})
        assert code == 401 and doc["error"]["code"] == "unauthorized", (path, code, doc)
        assert r.getheader("X-Modelbuf-Node") in NODES  # the node's answer, not HAProxy's
    code, doc, r = hp.request("POST", "/m/m01/infer", {}, headers={"X-API-Key": "wrong"})
    assert code == 401
    # /health stays open (the balancer's checks need no key).
    code, doc, r = hp.request("GET", "/health", headers={})
    assert code == 200 and doc["node"] in NODES


def test_a_node_lost_gives_up_only_its_models(fleet):
    hp, daemons = fleet
    before = mapping(hp)
    victim = max(NODES, key=lambda n: sum(v == n for v in before.values()))
    vi = NODES.index(victim)
    theirs = sorted(m for m, n in before.items() if n == victim)
    assert theirs, before
    names = ring(hp)
    share = {n: sum(v == n for v in names.values()) / len(names) for n in NODES}
    assert all(0.25 < x < 0.42 for x in share.values()), share  # spread evenly
    port, d = daemons[vi].port, daemons[vi]
    d.proc.send_signal(signal.SIGKILL)  # a crash: no goodbye
    d.proc.wait()
    d.stop()
    # Before HAProxy's checks have caught up, a request for one of its
    # models is tried again on another node (retries, redispatch).
    node, _ = node_of(hp, theirs[0])
    assert node != victim
    hp.wait_states({victim: "DOWN"})
    after = {}
    for m in MODELS:
        node, load_ms = node_of(hp, m)
        after[m] = node
        if before[m] != victim:
            assert node == before[m], (m, before[m], node)  # the others stay where they were
    moved = sorted(m for m in MODELS if after[m] != before[m])
    assert moved == theirs
    # Over many names: exactly the lost node's move (about a third), the
    # others stay.
    names_after = ring(hp)
    assert {k for k in names if names_after[k] != names[k]} == \
        {k for k in names if names[k] == victim}
    assert victim not in names_after.values()
    assert all(after[m] != victim for m in moved)
    # Each moved model is now served warm by its new node, which loaded it.
    for m in moved:
        node, load_ms = node_of(hp, m)
        assert node == after[m] and load_ms == 0
        assert m in loaded_on(daemons[NODES.index(node)])
    # The node comes back (same address, same configuration): the mapping
    # is what it was, and its models load there again.
    daemons[vi] = Daemon(config(victim), port=port)
    hp.wait_states({victim: "UP"})
    assert mapping(hp) == before
    assert loaded_on(daemons[vi]) == set(theirs)
    assert ring(hp) == names
