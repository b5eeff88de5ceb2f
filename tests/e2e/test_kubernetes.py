"""The Kubernetes manifests of examples/kubernetes hold what
docs/SCALE-OUT.md promises: a DaemonSet of modelbufd on GPU nodes (node
selector, toleration, an nvidia.com/gpu request) started with the
daemon's real flags (run here with --check-config on the ConfigMap's
file), its node name from the downward API, probes on /health at the
port it listens on, the configuration mounted where --config reads it, a
headless Service, and HAProxy with the recipe of examples/haproxy (the
same frontend), finding the pods through that Service."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml (scripts/deps.sh installs it)")

from test_daemon import DAEMON, SLOW  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
K8S = os.path.join(HERE, "..", "..", "examples", "kubernetes")
EXAMPLE = os.path.join(HERE, "..", "..", "examples", "haproxy", "haproxy.cfg")
HAPROXY = shutil.which("haproxy") or next(
    (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="module")
def docs():
    out = []
    for f in sorted(os.listdir(K8S)):
        if f.endswith(".yaml"):
            with open(os.path.join(K8S, f)) as fh:
                out += [d for d in yaml.safe_load_all(fh) if d]
    return out


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, [d["metadata"]["name"] for d in found])
    return found[0]


def container(workload):
    cs = workload["spec"]["template"]["spec"]["containers"]
    assert len(cs) == 1
    return cs[0]


def port_of(c, port):
    """A probe's or Service's port (a number or the container port's name)."""
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in c["ports"] if p["name"] == port)


def flag(cmd, name):
    i = cmd.index(name)
    return cmd[i + 1]


def test_daemonset_on_gpu_nodes(docs):
    ds = one(docs, "DaemonSet", "modelbufd")
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"], "GPU nodes only"
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    c = container(ds)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert int(c["resources"]["requests"]["nvidia.com/gpu"]) >= 1
    # Stopping drains up to 30 s before the workers go: the grace is longer.
    assert spec["terminationGracePeriodSeconds"] > 30


def test_daemon_flags_are_real(docs):
    ds = one(docs, "DaemonSet", "modelbufd")
    c = container(ds)
    cmd = c["command"]
    assert os.path.basename(cmd[0]) == "modelbufd"
    help_text = subprocess.run([DAEMON, "--help"], capture_output=True, text=True).stdout
    for arg in cmd[1:]:
        if arg.startswith("-"):
            assert re.search(r"(^|\s)" + re.escape(arg) + r"\b", help_text), arg
    # The node name: the Kubernetes node's, from the downward API.
    assert flag(cmd, "--node") == "$(NODE_NAME)"
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The API key from the Secret, which exists with that key.
    ref = env["MODELBUF_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = one(docs, "Secret", ref["name"])
    assert ref["key"] in secret["stringData"]


def test_config_is_mounted_where_the_flag_reads_it_and_is_valid(docs):
    ds = one(docs, "DaemonSet", "modelbufd")
    c = container(ds)
    cmd = c["command"]
    path = flag(cmd, "--config")
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == os.path.dirname(path))
    vol = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    cm = one(docs, "ConfigMap", vol["configMap"]["name"])
    text = cm["data"][os.path.basename(path)]
    # The daemon's own command line, with Kubernetes' $(VAR) filled in and
    # the file where it would be, checks it.
    d = tempfile.mkdtemp(prefix="mb-k8s-")
    f = os.path.join(d, os.path.basename(path))
    with open(f, "w") as fh:
        fh.write(text)
    env = {"NODE_NAME": "gpu-node-1", "MODELBUF_API_KEY": "k"}
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in cmd[1:]]
    args[args.index(path)] = f
    e = dict(os.environ, **env)
    e.pop("MODELBUF_LISTEN", None)
    e.pop("MODELBUF_NODE", None)
    r = subprocess.run([DAEMON, "--check-config", *args], capture_output=True, text=True,
                       env=e, timeout=30 * SLOW)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "node gpu-node-1," in r.stdout and "api keys 1" in r.stdout, r.stdout
    listen = flag(cmd, "--listen")
    assert f"listen {listen}," in r.stdout


def test_probes_and_services_reach_the_daemon(docs):
    ds = one(docs, "DaemonSet", "modelbufd")
    c = container(ds)
    port = int(flag(c["command"], "--listen").rsplit(":", 1)[1])
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/health" and port_of(c, get["port"]) == port, probe
    svc = one(docs, "Service", "modelbufd")
    assert svc["spec"]["clusterIP"] == "None"  # headless: one record per pod
    labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= labels.items()
    sp = svc["spec"]["ports"][0]
    assert port_of(c, sp["targetPort"]) == port


def frontend(cfg):
    """The frontend section's directives (no comments, no bind)."""
    m = re.search(r"(?ms)^frontend modelbuf\n(.*?)(?=^\S|\Z)", cfg)
    assert m, cfg
    return [ln.strip() for ln in m.group(1).splitlines()
            if ln.strip() and not ln.strip().startswith("#") and not ln.strip().startswith("bind ")]


def backend(cfg):
    m = re.search(r"(?ms)^backend modelbuf_nodes\n(.*?)(?=^\S|\Z)", cfg)
    assert m, cfg
    return [ln.strip() for ln in m.group(1).splitlines()
            if re.match(r"\s*(balance|hash-type|option httpchk|http-check)", ln)]


def test_haproxy_has_the_recipe(docs):
    cm = one(docs, "ConfigMap", "modelbuf-haproxy")
    cfg = cm["data"]["haproxy.cfg"]
    with open(EXAMPLE) as f:
        example = f.read()
    assert frontend(cfg) == frontend(example) and len(frontend(example)) >= 8
    assert backend(cfg) == backend(example)
    # The nodes from the headless Service's SRV records (its named port).
    svc = one(docs, "Service", "modelbufd")
    srv = f"_{svc['spec']['ports'][0]['name']}._tcp.{svc['metadata']['name']}." \
          f"{svc['metadata']['namespace']}.svc.cluster.local"
    assert re.search(r"(?m)^\s*server-template \S+ \d+-\d+ " + re.escape(srv) + " ", cfg), cfg
    # Every alias of the models is in the map (so it lands where its model does).
    conf = yaml.safe_load(one(docs, "ConfigMap", "modelbuf-config")["data"]["modelbuf.yaml"])
    aliases = {a: n for n, m in conf["models"].items() for a in m.get("aliases", [])}
    mapped = dict(ln.split() for ln in cm["data"]["modelbuf-aliases.map"].splitlines()
                  if ln.strip() and not ln.startswith("#"))
    assert mapped == aliases
    # The Deployment reads them where the files are mounted.
    dep = one(docs, "Deployment", "modelbuf-haproxy")
    c = container(dep)
    cfg_path = c["command"][c["command"].index("-f") + 1]
    map_path = re.search(r"map\((\S+)\)", cfg).group(1)
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for p in (cfg_path, map_path):
        vol = vols[mounts[os.path.dirname(p)]]
        assert vol["configMap"]["name"] == "modelbuf-haproxy"
        assert os.path.basename(p) in cm["data"]
    # The listening port is the one the Service sends to.
    bind = int(re.search(r"(?m)^\s*bind :(\d+)", cfg).group(1))
    assert port_of(c, one(docs, "Service", "modelbuf")["spec"]["ports"][0]["targetPort"]) == bind
    if HAPROXY is None:
        pytest.skip("haproxy not installed: the configuration's syntax is not checked")
    d = tempfile.mkdtemp(prefix="mb-k8s-")
    with open(os.path.join(d, "modelbuf-aliases.map"), "w") as f:
        f.write(cm["data"]["modelbuf-aliases.map"])
    with open(os.path.join(d, "haproxy.cfg"), "w") as f:
        f.write(cfg.replace(map_path, os.path.join(d, "modelbuf-aliases.map")))
    r = subprocess.run([HAPROXY, "-c", "-f", os.path.join(d, "haproxy.cfg")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
