"""The configuration's JSON Schema (docs/modelbuf.schema.json): the
checked-in file is what `modelbufd --print-schema` writes from the parser's
own tables, and every example configuration the project ships is valid
under it and under `modelbufd --check-config`. The schema's patterns are
checked against the daemon's own verdicts on durations and sizes."""
import glob
import json
import os
import subprocess
import tempfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(ROOT, "build"))
DAEMON = os.path.join(BUILD, "daemon", "modelbufd")
SCHEMA = os.path.join(ROOT, "docs", "modelbuf.schema.json")

jsonschema = pytest.importorskip("jsonschema", reason="python3-jsonschema (scripts/deps.sh)")
yaml = pytest.importorskip("yaml", reason="python3-yaml (scripts/deps.sh)")


def generated():
    p = subprocess.run([DAEMON, "--print-schema"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def validator():
    schema = json.loads(generated())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def example_configs():
    """Every modelbufd configuration the project ships as an example: the
    YAML files under examples/ whose top level is a mapping with models or
    listen (not a Kubernetes manifest: a file of several documents, or one
    with a kind), and dist/modelbuf.yaml."""
    found = []
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "**", "*.y*ml"), recursive=True)
                       + [os.path.join(ROOT, "dist", "modelbuf.yaml")]):
        if not os.path.exists(path):
            continue
        with open(path) as f:
            docs = list(yaml.safe_load_all(f))
        doc = docs[0] if len(docs) == 1 else None
        if isinstance(doc, dict) and ("models" in doc or "listen" in doc) and "kind" not in doc:
            found.append(path)
    return found


def test_checked_in_schema_is_the_generated_one():
    with open(SCHEMA) as f:
        assert f.read() == generated(), (
            "docs/modelbuf.schema.json is stale: "
            "build/daemon/modelbufd --print-schema > docs/modelbuf.schema.json")


def test_examples_are_valid():
    v = validator()
    paths = example_configs()
    assert any(p.endswith("examples/modelbuf.yaml") for p in paths), paths
    for path in paths:
        with open(path) as f:
            doc = yaml.safe_load(f)
        errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in v.iter_errors(doc)]
        assert not errors, f"{path}: {errors}"
        p = subprocess.run([DAEMON, "--check-config", path], capture_output=True, text=True,
                           cwd=ROOT)
        assert p.returncode == 0, f"{path}: {p.stderr}"


def test_kubernetes_configuration_is_valid():
    """The configuration examples/kubernetes puts in its ConfigMap passes
    the schema as well (test_kubernetes.py runs --check-config on it)."""
    with open(os.path.join(ROOT, "examples", "kubernetes", "modelbuf-config.yaml")) as f:
        cms = [d for d in yaml.safe_load_all(f) if d and d.get("kind") == "ConfigMap"]
    assert len(cms) == 1
    doc = yaml.safe_load(cms[0]["data"]["modelbuf.yaml"])
    errors = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator().iter_errors(doc)]
    assert not errors, errors


def check(text):
    """(schema errors, daemon's exit status) for a configuration's text."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(text)
    try:
        p = subprocess.run([DAEMON, "--check-config", f.name], capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    errors = list(validator().iter_errors(yaml.safe_load(text)))
    return errors, p.returncode


def test_schema_and_daemon_agree():
    good = """x-base: &base {cmd: [/bin/true, "${PORT}"], keep_alive: 1h30m, offload: yes}
defaults: {keep_alive: -1, host_keep_alive: forever, queue_timeout: 1.5, max_queue: 0}
limits: {max_body_size: 1.5GiB, min_body_rate: 0, body_buffer_size: 64 KiB, retry_after: 10s}
devices: [{host: true, budget: 2GB}]
eviction: cost
dashboard: false
node: gpu-node-7
models:
  Qwen/Qwen2.5-7B:
    <<: *base
    aliases: [qwen]
    hooks: {offload: {path: /sleep, method: post}}
  b: {<<: *base, device: auto, env: {A_B: "1"}, cleanup: manual}
"""
    errors, rc = check(good)
    assert rc == 0 and not errors, [e.message for e in errors]
    # Each of these the daemon refuses, and so does the schema.
    for bad in ("models: {m: {cmd: [x], vramm: 1GiB}}\n",
                "models: {m: {cmd: [x], keep_alive: 5 m}}\n",
                "models: {m: {cmd: [x], keep_alive: 5min}}\n",
                "defaults: {max_queue: -1}\n",
                "models: {m: {cmd: [x], backend: docker}}\n",
                "limits: {max_body_size: 6G}\n",
                "models: {m: {cmd: [x], hooks: {offload: {method: GET}}}}\n",
                "models: {../m: {cmd: [x]}}\n",
                "devices: []\n",
                "eviction: fifo\n",
                "dashboard: sometimes\n",
                "node: gpu node 7\n",
                'node: "a\\"b"\n',
                "node: ''\n",
                "node: [a, b]\n",
                "models: {m: {cmd: [x], cleanup: always}}\n",
                "ttl: 5m\n"):
        errors, rc = check(bad)
        assert rc == 1, bad
        assert errors, f"the schema takes what the daemon refuses: {bad}"


def test_enum_words_are_the_daemons():
    """A key whose value is one of a few words lists them as its enum, and
    they are the words the daemon names when it refuses another."""
    schema = json.loads(generated())
    props = {"top": schema["properties"]}
    for name, d in schema["definitions"].items():
        props[name] = d.get("properties", {})
    cases = [("top", "eviction", "eviction: fifo\n", ["lru", "cost"]),
             ("model", "backend", "models: {m: {cmd: [x], backend: docker}}\n",
              ["process", "plugin", "tensors"]),
             ("model", "cleanup", "models: {m: {cmd: [x], cleanup: always}}\n",
              ["manual", "after_request"]),
             ("loader", "io", "models: {m: {backend: tensors, files: [/x], loader: {io: mmap}}}\n",
              ["auto", "buffered", "direct"])]
    for table, key, bad, words in cases:
        enums = [a["enum"] for a in props[table][key]["anyOf"] if "enum" in a]
        assert enums == [words], (table, key, props[table][key])
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(bad)
        try:
            p = subprocess.run([DAEMON, "--check-config", f.name], capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        assert p.returncode == 1, bad
        said = ", ".join(words[:-1]) + " or " + words[-1]
        assert f"({said})" in p.stderr, p.stderr
