"""Shared helpers for the front door's tests (test_front_door*.py,
test_smuggling.py, test_fd_*.py): a daemon in a temp dir on a free port
whose models are raw workers (workers/raw_worker.py) that record every
request they receive, and a raw-socket HTTP/1.1 client that sends exactly
the bytes a test gives it and reads answers strictly.

MODELBUF_BUILD names the build folder; MODELBUF_DAEMON, when set, the
daemon binary to run instead of $MODELBUF_BUILD/daemon/modelbufd.
MB_SANITIZE (set by meson) makes time and memory bounds generous; the temp
dir of a daemon that stopped cleanly is removed unless MB_KEEP_TMP is set."""
import base64
import hashlib
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.environ.get("MODELBUF_BUILD", os.path.join(HERE, "../../build"))
DAEMON = os.environ.get("MODELBUF_DAEMON") or os.path.join(BUILD, "daemon", "modelbufd")
RAW_WORKER = os.path.join(HERE, "workers", "raw_worker.py")
SANITIZED = os.environ.get("MB_SANITIZE", "none") not in ("", "none")
SLOW = 3 if SANITIZED else 1  # sanitized daemons are slower to answer
MEM = 4 if SANITIZED else 1  # and hold shadow memory and quarantined blocks
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile():
    """Soft RLIMIT_NOFILE up to the hard one, for tests that hold thousands
    of sockets (the daemons started afterwards inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


raise_nofile()


def uid():
    return "u" + secrets.token_hex(6)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raw_model(name, **opts):
    """A model section whose worker is the raw worker (recording to
    DIR/NAME.jsonl); opts are more keys of the section, as YAML text."""
    out = f"  {name}:\n    cmd: @RAW@\n"
    for k, v in opts.items():
        out += f"    {k}: {v}\n"
    return out


def config(models, limits=None, extra=""):
    """A daemon configuration: the host device, models (text from raw_model)."""
    text = "devices: [{host: true, budget: 4GiB}]\ndefaults: {keep_alive: 10m}\n"
    if limits:
        text += "limits: {" + ", ".join(f"{k}: {v}" for k, v in limits.items()) + "}\n"
    return text + extra + "models:\n" + "".join(models)


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def rss_kib(pid):
    return int(proc_status(pid)["VmRSS"].split()[0])


def threads(pid):
    return int(proc_status(pid)["Threads"])


def settled_threads(pid, timeout=5):
    """The thread count once it stops changing (threads of connections
    closed just before may still be ending)."""
    last, same = threads(pid), 0
    deadline = time.time() + timeout * SLOW
    while same < 5 and time.time() < deadline:
        time.sleep(0.1)
        n = threads(pid)
        same = same + 1 if n == last else 0
        last = n
    return last


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def alive(pid):
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Daemon:
    def __init__(self, cfg, nofile=None):
        self.dir = tempfile.mkdtemp(prefix="mb-frontdoor-")
        self.port = free_port()
        self.cfg = os.path.join(self.dir, "modelbuf.yaml")
        cmd = ["/usr/bin/python3", RAW_WORKER, "--port", "${PORT}", "--record",
               os.path.join(self.dir, "${MODEL}.jsonl")]
        with open(self.cfg, "w") as f:
            f.write(f"listen: 127.0.0.1:{self.port}\n" +
                    cfg.replace("@RAW@", json.dumps(cmd)))
        self.logpath = os.path.join(self.dir, "daemon.log")
        self.final_log = None
        self.log = open(self.logpath, "w+")

        def limit():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen([DAEMON, "--config", self.cfg], stdout=self.log,
                                     stderr=subprocess.STDOUT, preexec_fn=limit)
        self.pid = self.proc.pid
        deadline = time.time() + 20 * SLOW
        while time.time() < deadline:
            try:
                if self.get("/health", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError("daemon exited: " + self.logs())
            time.sleep(0.05)
        self.stop()
        raise AssertionError("daemon did not start: " + self.logs())

    # --- the daemon's own state -------------------------------------------
    def logs(self):
        if self.final_log is not None:
            return self.final_log
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def log_lines(self):
        with open(self.logpath, "rb") as f:
            return f.read().count(b"\n")

    def running(self):
        return self.proc.poll() is None

    def worker_pids(self):
        pids = set()
        for name in os.listdir(self.dir):
            if name.endswith(".jsonl"):
                for rec in self.records(name[:-6], phases=("start",)):
                    pids.add(rec["pid"])
        return pids

    def stop(self):
        """SIGTERM, then the exit status; workers left behind are killed (a
        test that cares checks them before)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30 * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.worker_pids():
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self.log.close()
        self.final_log = self.logs()
        if self.proc.returncode == 0 and not os.environ.get("MB_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    # --- plain requests (well-formed, through http.client) -----------------
    def request(self, method, path, body=None, headers=None, timeout=30):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout * SLOW)
        try:
            data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
            c.request(method, path, body=data, headers=headers or {})
            r = c.getresponse()
            raw = r.read()
        finally:
            c.close()
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = raw.decode(errors="replace")
        return r.status, doc, {k.lower(): v for k, v in r.getheaders()}

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body if body is not None else {}, **kw)

    def status(self, name):
        code, doc, _ = self.get("/api/models/" + name)
        assert code == 200, doc
        return doc

    def wait_until(self, name, pred, timeout=10):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            st = self.status(name)
            if pred(st):
                return st
            time.sleep(0.02)
        raise AssertionError(f"{name}: condition not met: {self.status(name)}")

    def metric(self, name, **labels):
        """The value of one sample of GET /metrics (0 when absent)."""
        code, text, _ = self.get("/metrics")
        assert code == 200
        want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
                       if labels else "")
        for line in text.splitlines():
            if line.startswith("#") or not line:
                continue
            key, _, value = line.rpartition(" ")
            # Every sample carries the daemon's node as its last label.
            key = re.sub(r',?node="[^"]*"\}$', "}", key).replace("{}", "")
            if key == want:
                return float(value)
        return 0.0

    def fivexx(self, model):
        return self.metric("modelbuf_requests_total", model=model, code="5xx")

    # --- what the workers received ----------------------------------------
    def records(self, model, phases=("done",)):
        path = os.path.join(self.dir, model + ".jsonl")
        out = []
        if not os.path.exists(path):
            return out
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    rec = json.loads(line)
                    if rec["phase"] in phases:
                        out.append(rec)
        return out

    def seen(self, model, marker, phases=("head", "done", "cut")):
        """Records of `model` with `marker` anywhere: target, headers, body."""
        out = []
        for rec in self.records(model, phases):
            hay = rec.get("head", "") + rec.get("target", "") + json.dumps(rec.get("headers"))
            if rec.get("body_b64"):
                hay += base64.b64decode(rec["body_b64"]).decode("latin-1")
            hay += json.dumps(rec.get("trailers", []))
            if marker in hay:
                out.append(rec)
        return out

    def seen_anywhere(self, marker):
        out = []
        for name in os.listdir(self.dir):
            if name.endswith(".jsonl"):
                out += self.seen(name[:-6], marker)
        return out

    def connect(self, timeout=10):
        return Client(self.port, timeout)


# --- a raw HTTP/1.1 client --------------------------------------------------
class Resp:
    def __init__(self):
        self.status, self.reason, self.version = None, "", ""
        self.headers, self.body, self.interim = [], b"", []
        self.framing = None   # "content-length", "chunked", "close", "none"
        self.complete = None  # the body ended as its framing says
        self.head = b""

    def header(self, name):
        vals = self.all(name)
        return vals[0] if vals else None

    def all(self, name):
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def message(self):
        """The error message of a JSON error answer ("" when there is none)."""
        try:
            return self.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return ""

    def __repr__(self):
        return f"<{self.status} {self.reason} {self.headers} {self.body[:300]!r}>"


class Client:
    """One connection; send() writes bytes as given, response() reads one
    answer (None when the connection closed before any byte of it)."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout * SLOW)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False
        self.reset = False  # the peer aborted (RST) rather than closed
        self.timeout = timeout * SLOW

    def send(self, data):
        self.sock.sendall(data)

    def try_send(self, data):
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def close(self):
        self.sock.close()

    def fileno(self):
        return self.sock.fileno()

    def _fill(self, deadline):
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no answer in time; got " + repr(self.buf[:200]))
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except socket.timeout:
            raise TimeoutError("no answer in time; got " + repr(self.buf[:200])) from None
        except ConnectionResetError:
            self.reset = True
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def _line(self, deadline):
        while b"\r\n" not in self.buf:
            if not self._fill(deadline):
                return None
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                out, self.buf = self.buf, b""
                return out
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def response(self, head=False, timeout=None, stop_at_interim=False, body=True):
        """One answer; interim 1xx are skipped (listed in .interim) unless
        stop_at_interim; body=False stops after the head (for streams)."""
        deadline = time.monotonic() + (timeout * SLOW if timeout else self.timeout)
        r = Resp()
        while True:
            while b"\r\n\r\n" not in self.buf:
                if not self._fill(deadline):
                    if not self.buf:
                        return None
                    raise AssertionError("connection closed inside an answer's head: "
                                         + repr(self.buf[:300]))
            rawhead, self.buf = self.buf.split(b"\r\n\r\n", 1)
            lines = rawhead.split(b"\r\n")
            parts = lines[0].decode("latin-1").split(" ", 2)
            assert len(parts) >= 2 and parts[0] in ("HTTP/1.0", "HTTP/1.1") and \
                parts[1].isdigit() and len(parts[1]) == 3, "bad status line: " + repr(lines[0])
            r.version, r.status = parts[0], int(parts[1])
            r.reason = parts[2] if len(parts) > 2 else ""
            r.head = rawhead
            r.headers = []
            for ln in lines[1:]:
                n, _, v = ln.decode("latin-1").partition(":")
                r.headers.append((n, v.strip(" \t")))
            if 100 <= r.status < 200 and r.status != 101:
                r.interim.append(r.status)
                if stop_at_interim:
                    return r
                continue
            break
        if not body:
            return r
        te, cl = r.header("Transfer-Encoding"), r.all("Content-Length")
        if head or r.status in (204, 304):
            r.framing, r.complete = "none", True
        elif te is not None:
            assert te.lower() == "chunked", "answer with Transfer-Encoding " + te
            assert not cl, "answer with Content-Length and Transfer-Encoding"
            r.framing, r.complete = "chunked", False
            body = b""
            while True:
                line = self._line(deadline)
                if line is None:
                    break
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:  # trailers
                        t = self._line(deadline)
                        if t is None or t == b"":
                            break
                    r.complete = t == b""
                    break
                data = self._exact(size + 2, deadline)
                body += data[:size]
                if len(data) < size + 2:
                    break
                assert data[size:] == b"\r\n", "chunk not followed by CRLF"
            r.body = body
        elif cl:
            assert len(set(cl)) == 1, "answer with two Content-Length values"
            n = int(cl[0])
            r.framing = "content-length"
            r.body = self._exact(n, deadline)
            r.complete = len(r.body) == n
        else:
            r.framing = "close"
            while self._fill(deadline):
                pass
            r.body, self.buf = self.buf, b""
            r.complete = None  # no way to tell a cut answer from a whole one
        return r

    def wait_closed(self, timeout):
        """True when the peer closes (EOF or reset) within timeout (seconds,
        before SLOW); data that arrives meanwhile is kept in self.extra."""
        deadline = time.monotonic() + timeout * SLOW
        self.extra = b""
        if self.eof:
            return True
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except socket.timeout:
                return False
            except ConnectionResetError:
                self.reset = self.eof = True
                return True
            if not data:
                self.eof = True
                return True
            self.extra += data


def build(method, target, headers=(), body=b"", version="HTTP/1.1", host=True, length=True):
    """Request bytes. Content-Length is added for a body unless length=False."""
    out = f"{method} {target} {version}\r\n".encode("latin-1")
    if host:
        out += b"Host: test\r\n"
    for n, v in headers:
        out += n.encode("latin-1") + b": " + (v if isinstance(v, bytes)
                                               else v.encode("latin-1")) + b"\r\n"
    if body and length:
        out += b"Content-Length: %d\r\n" % len(body)
    return out + b"\r\n" + body


def exchange(port, data, timeout=10, head=False):
    """Sends data on a new connection: (answer or None, the open client)."""
    c = Client(port, timeout)
    c.send(data)
    try:
        return c.response(head=head), c
    except TimeoutError:
        return None, c


def chunked(*pieces, ext=b"", trailers=b""):
    out = b""
    for p in pieces:
        out += b"%x%s\r\n%s\r\n" % (len(p), ext, p)
    return out + b"0\r\n" + trailers + b"\r\n"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def assert_error(r, status, *keywords):
    """r is a JSON error answer with this status whose message names one of
    keywords (case-insensitive), when keywords are given."""
    assert r is not None, f"no answer (connection closed), expected {status}"
    assert r.status == status, f"expected {status}, got {r!r}"
    msg = r.message()
    assert msg, f"expected a JSON error, got {r!r}"
    if keywords:
        assert any(k.lower() in msg.lower() for k in keywords), \
            f"message does not name {keywords}: {msg!r}"


def echo_of(r, target, body=b""):
    """r is the raw worker's echo of one request to target with body; the
    echo as a dict."""
    assert r is not None and r.status == 200, r
    doc = r.json()
    assert doc["target"] == target, (doc["target"], target)
    assert doc["body_len"] == len(body) and doc["body_sha256"] == sha(body), doc
    return doc


def assert_well_framed(rec, body_len):
    """One request as the worker got it: no violation, framed by
    Content-Length, never Transfer-Encoding."""
    assert rec["violations"] == [], rec
    names = [n.lower() for n, _ in rec["headers"]]
    assert "transfer-encoding" not in names, rec["headers"]
    assert rec["body_len"] == body_len, rec
    cl = [v for n, v in rec["headers"] if n.lower() == "content-length"]
    if body_len:
        assert rec["framing"] == "content-length" and cl == [str(body_len)], rec
    else:
        assert cl in ([], ["0"]), rec


def victim(d, model="raw", timeout=10):
    """A well-behaved client on its own connection: its answer must be the
    echo of its own request."""
    tag = uid()
    body = ("victim " + tag).encode()
    r, c = exchange(d.port, build("POST", f"/m/{model}/victim-{tag}", body=body),
                    timeout=timeout)
    c.close()
    assert r is not None, "a well-behaved client got no answer"
    echo_of(r, f"/victim-{tag}", body)


class Background:
    """Runs fn in a thread; join() gives its result or raises its error."""

    def __init__(self, fn, *args):
        self.result, self.error = None, None

        def run():
            try:
                self.result = fn(*args)
            except BaseException as e:  # noqa: B902 - handed to join()
                self.error = e

        self.t = threading.Thread(target=run, daemon=True)
        self.t.start()

    def join(self, timeout=60):
        self.t.join(timeout * SLOW)
        assert not self.t.is_alive(), "background work did not finish"
        if self.error:
            raise self.error
        return self.result


def wait_for(pred, timeout, step=0.02):
    """Polls pred until true or timeout (seconds, before SLOW): its last value."""
    deadline = time.time() + timeout * SLOW
    while True:
        v = pred()
        if v or time.time() > deadline:
            return v
        time.sleep(step)
