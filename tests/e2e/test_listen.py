"""modelbufd end to end: where it listens. The extra Unix socket of
`unix_socket:` serves the same API as TCP (auth included); --listen wins
over MODELBUF_LISTEN, which wins over the file; an address in use is a
clear error with exit status 3. Real daemon, real worker."""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import DAEMON, SLOW, Daemon, free_port, worker  # noqa: E402


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30 * SLOW)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)


def unix_request(path, method, url, body=None, headers=None):
    c = UnixConnection(path)
    c.request(method, url, body=body, headers=headers or {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, json.loads(data) if data else None


def test_unix_socket_serves_the_api_with_auth():
    sock = os.path.join(tempfile.mkdtemp(prefix="mb-sock-"), "modelbuf.sock")
    d = Daemon(f"unix_socket: {sock}\napi_keys: [k3y]\nmodels:\n  a:\n    cmd: {worker()}\n")
    try:
        st, doc = unix_request(sock, "GET", "/health")
        assert st == 200 and doc["status"] == "healthy"
        st, doc = unix_request(sock, "GET", "/api/models")
        assert st == 401
        st, doc = unix_request(sock, "POST", "/m/a/infer", body=b'{"x": 1}',
                               headers={"Authorization": "Bearer k3y"})
        assert st == 200 and doc["model"] == "a"
        st, doc, _ = d.get("/api/models/a", headers={"Authorization": "Bearer k3y"})
        assert st == 200 and doc["state"] == "ready"
    finally:
        assert d.stop() == 0


def wait_health(port, proc):
    deadline = time.time() + 20 * SLOW
    while time.time() < deadline:
        assert proc.poll() is None
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("no answer on port %d" % port)


def test_listen_precedence_and_address_in_use():
    cfg = os.path.join(tempfile.mkdtemp(prefix="mb-listen-"), "modelbuf.yaml")
    file_port, env_port, flag_port = free_port(), free_port(), free_port()
    with open(cfg, "w") as f:
        f.write(f"listen: 127.0.0.1:{file_port}\nmodels:\n  a:\n    cmd: {worker()}\n")
    env = dict(os.environ, MODELBUF_LISTEN=f"127.0.0.1:{env_port}")
    p = subprocess.Popen([DAEMON, "--config", cfg], env=env, stderr=subprocess.DEVNULL)
    try:
        wait_health(env_port, p)
        # A second daemon on the same address: exit 3 and a message naming it.
        q = subprocess.run([DAEMON, "--config", cfg], env=env, capture_output=True, text=True,
                           timeout=30 * SLOW)
        assert q.returncode == 3 and str(env_port) in q.stderr
    finally:
        p.terminate()
        assert p.wait(timeout=30 * SLOW) == 0
    p = subprocess.Popen([DAEMON, "--config", cfg, "--listen", f"127.0.0.1:{flag_port}"], env=env,
                         stderr=subprocess.DEVNULL)
    try:
        wait_health(flag_port, p)
    finally:
        p.terminate()
        assert p.wait(timeout=30 * SLOW) == 0
