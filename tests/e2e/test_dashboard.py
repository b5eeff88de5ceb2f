"""The web dashboard at GET / (docs/DASHBOARD.md), end to end: its static
files over raw HTTP (headers, ETag and 304, HEAD, 405, unknown files and
paths that try to leave the folder), then the page itself in headless
Chromium driven by Selenium against a real daemon with real workers: the
models and their states, a load seen on the page as it happens, the
buttons acting on the daemon, the confirmation before unloading a model in
use, the worker log following new lines (as text: a log line that looks
like markup stays text), the API key asked once and kept for the tab, the
banner when the daemon goes away, and no console errors.

Without Chromium, chromedriver or python3-selenium (scripts/deps.sh
installs them) the browser tests skip, saying which is missing. With
MB_DASHBOARD_SCREENSHOTS=DIR, test_screenshots writes the PNGs of
docs/DASHBOARD.md into DIR."""
import http.client
import json
import os
import socket
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_daemon import SLOW, Daemon, worker  # noqa: E402

try:
    from selenium import webdriver
    from selenium.common.exceptions import (NoSuchElementException,
                                            StaleElementReferenceException,
                                            TimeoutException)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

CHROMIUM = os.environ.get("MB_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MB_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT = 30 * SLOW  # generous: a page that is right is never failed for being slow
ASSETS = {"/": "text/html", "/dashboard/app.js": "text/javascript",
          "/dashboard/style.css": "text/css", "/dashboard/icon.svg": "image/svg+xml"}

CONFIG = f"""
devices: [{{host: true, budget: 1GiB}}]
host_memory: 512MiB
defaults: {{keep_alive: 10m, host_keep_alive: 10m}}
models:
  asr:
    cmd: {worker("--alloc-mb", "16")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    max_concurrency: 2
  llm:
    cmd: {worker("--alloc-mb", "8")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
    aliases: [gpt-test]
  embed:
    cmd: {worker()}
"""


@pytest.fixture(scope="module")
def d():
    daemon = Daemon(CONFIG)
    yield daemon
    assert daemon.stop() == 0, daemon.logs()[-3000:]


def raw(port, method, target, headers=()):
    """One request with exactly this target (no normalising); (status,
    headers as a dict of lower-case names, body)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10 * SLOW)
    c.putrequest(method, target, skip_accept_encoding=True)
    for k, v in headers:
        c.putheader(k, v)
    c.endheaders()
    r = c.getresponse()
    body = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, body


# ---------------------------------------------------------------------------
# The static files over HTTP


def test_static_files_and_headers(d):
    for path, ctype in ASSETS.items():
        code, h, body = raw(d.port, "GET", path)
        assert code == 200, (path, body)
        assert h["content-type"].startswith(ctype), (path, h)
        assert int(h["content-length"]) == len(body) > 0
        assert h["cache-control"] == "no-cache"
        assert h["x-content-type-options"] == "nosniff"
        assert h["referrer-policy"] == "no-referrer"
        assert h["x-frame-options"] == "DENY"
        csp = h["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert "frame-ancestors 'none'" in csp
        etag = h["etag"]
        assert etag.startswith('"') and etag.endswith('"') and len(etag) == 34
    # The page refers to its files relatively and runs no inline script.
    _, _, page = raw(d.port, "GET", "/")
    assert b'src="dashboard/app.js"' in page and b'href="dashboard/style.css"' in page
    assert page.count(b"<script") == 1 and b"<script src=" in page
    assert b"http://" not in page and b"https://" not in page  # nothing from elsewhere
    _, _, js = raw(d.port, "GET", "/dashboard/app.js")
    assert b"innerHTML" not in js and b"eval(" not in js
    # A query string does not change which file it is.
    code, h, _ = raw(d.port, "GET", "/?from=bookmark")
    assert code == 200 and h["content-type"].startswith("text/html")


def test_etag_and_304(d):
    code, h, body = raw(d.port, "GET", "/dashboard/app.js")
    etag = h["etag"]
    for inm in (etag, "W/" + etag, '"nope", ' + etag, "*", '"x",W/' + etag):
        code, h2, body2 = raw(d.port, "GET", "/dashboard/app.js", [("If-None-Match", inm)])
        assert code == 304 and body2 == b"", inm
        assert h2["etag"] == etag and h2["cache-control"] == "no-cache"
        assert "content-length" not in h2 and "content-type" not in h2
    for inm in ('"nope"', etag[:-2] + '"', "garbage", ""):
        code, _, body2 = raw(d.port, "GET", "/dashboard/app.js", [("If-None-Match", inm)])
        assert code == 200 and body2 == body, inm
    # Each file has its own validator.
    tags = {raw(d.port, "GET", p)[1]["etag"] for p in ASSETS}
    assert len(tags) == len(ASSETS)


def test_head_and_methods(d):
    for path in ASSETS:
        _, hg, body = raw(d.port, "GET", path)
        code, hh, empty = raw(d.port, "HEAD", path)
        assert code == 200 and empty == b""
        for k in ("content-type", "content-length", "etag", "content-security-policy"):
            assert hh[k] == hg[k], (path, k)
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            code, h, body = raw(d.port, method, path)
            assert code == 405, (method, path)
            assert h["allow"] == "GET, HEAD"
            assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_unknown_files_and_traversal(d):
    for target in ("/dashboard/nope.js", "/dashboard/", "/dashboard/index.html",
                   "/dashboard/APP.JS", "/dashboard/app.js/", "/dashboard/./app.js",
                   "/dashboard//app.js", "/dashboard/../../etc/passwd",
                   "/dashboard/..%2f..%2fetc%2fpasswd", "/dashboard/%2e%2e/%2e%2e/etc/passwd",
                   "/dashboard/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/dashboard/....//etc/passwd",
                   "/dashboard/app.js%00", "/dashboard/%2fetc%2fpasswd",
                   "/dashboard/../daemon/dashboard.c", "/%2e%2e/%2e%2e/etc/passwd"):
        code, h, body = raw(d.port, "GET", target)
        assert code == 404, (target, code, body[:200])
        assert json.loads(body)["error"]["code"] == "not_found", target
        assert b"root:" not in body and b"#include" not in body
        assert "etag" not in h and "content-security-policy" not in h
    # Matched as sent: "/.." routes nowhere else either.
    code, _, body = raw(d.port, "GET", "/api/../dashboard/app.js")
    assert code == 404


def test_devices_has_host_tier(d):
    code, doc, _ = d.get("/api/devices")
    assert code == 200
    assert doc["host_tier"]["budget_bytes"] == 512 << 20
    assert doc["host_tier"]["used_bytes"] >= 0


def test_dashboard_off():
    off = Daemon(CONFIG.replace("host_memory:", "dashboard: false\nhost_memory:"))
    try:
        code, _, body = raw(off.port, "GET", "/")
        err = json.loads(body)["error"]
        assert code == 404 and "dashboard: false" in err["message"]
        for path in ASSETS:
            assert raw(off.port, "GET", path)[0] == 404, path
        assert off.get("/api/models")[0] == 200
    finally:
        assert off.stop() == 0


# ---------------------------------------------------------------------------
# The page in a browser


def browser_missing():
    if not HAVE_SELENIUM:
        return "python3-selenium is not installed (scripts/deps.sh installs it)"
    for p, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(p, os.X_OK):
            return f"{p} is not installed (Debian package {pkg}; scripts/deps.sh installs it)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = browser_missing()
    if why:
        pytest.skip(why)
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1440,1200", "--force-prefers-reduced-motion",
              "--disable-extensions", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(WAIT)
    yield drv
    drv.quit()


def console_errors(drv, allow=()):
    """The SEVERE console entries since the last call, but those matching
    one of allow."""
    out = []
    for e in drv.get_log("browser"):
        if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow):
            out.append(e["message"])
    return out


def wait(drv, pred, what, timeout=WAIT):
    try:
        # The page redraws its rows as the daemon's state comes in: an element
        # found a moment ago may be gone by the time it is read; look again.
        return WebDriverWait(drv, timeout, poll_frequency=0.05,
                             ignored_exceptions=(NoSuchElementException,
                                                 StaleElementReferenceException)
                             ).until(lambda _: pred())
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; console: {drv.get_log('browser')}")


def row(drv, name):
    return drv.find_element(By.CSS_SELECTOR, f'#models-body tr[data-model="{name}"]')


def page_state(drv, name):
    try:
        return row(drv, name).find_element(By.CSS_SELECTOR, ".state-cell .badge").text
    except Exception:
        return None


def click(drv, name, action):
    row(drv, name).find_element(By.CSS_SELECTOR, f"button.act-{action}").click()


@pytest.fixture(scope="module")
def page(d, browser):
    browser.get(f"http://127.0.0.1:{d.port}/")
    wait(browser, lambda: page_state(browser, "embed") is not None, "the models")
    wait(browser, lambda: "live" == browser.find_element(By.ID, "live").text, "the live stream")
    return browser


def test_page_lists_models_with_states(d, page):
    names = [tr.get_attribute("data-model")
             for tr in page.find_elements(By.CSS_SELECTOR, "#models-body tr")]
    assert names == [m["name"] for m in d.get("/api/models")[1]["models"]]
    for name in names:
        assert page_state(page, name) == d.status(name)["state"] == "unloaded"
    assert page.find_element(By.ID, "devices").text.count("host") >= 2  # the device and the tier
    assert "gpt-test" in row(page, "llm").text  # aliases shown
    health = d.get("/health")[1]
    want = f"modelbufd {health['version']} on {health['node']}"  # the node in a fleet
    wait(page, lambda: page.find_element(By.ID, "version").text == want, "the version and node")
    assert page.find_element(By.ID, "banner").is_displayed() is False
    assert console_errors(page) == []


def test_page_follows_a_load(d, page):
    """A load asked through the API shows on the page by the event stream
    (design goal: within a second; here only waited for, never timed)."""
    code, _, _ = d.post("/api/models/llm/load", {"wait": False})
    assert code == 202
    wait(page, lambda: page_state(page, "llm") in ("loading", "ready"), "llm loading")
    wait(page, lambda: page_state(page, "llm") == "ready", "llm ready")
    assert d.status("llm")["state"] == "ready"
    # The timeline has the change, the row its memory and worker.
    wait(page, lambda: "unloaded → loading" in page.find_element(By.ID, "events").text,
         "the event in the timeline")
    wait(page, lambda: "pid " in row(page, "llm").text, "the worker's pid")
    wait(page, lambda: "idle action in" in row(page, "llm").text, "the keep-alive countdown")
    assert console_errors(page) == []


def test_buttons_act(d, page):
    click(page, "asr", "load")
    d.wait_state("asr", ["ready"], timeout=WAIT)
    wait(page, lambda: page_state(page, "asr") == "ready", "asr ready")
    click(page, "asr", "offload")
    d.wait_state("asr", ["offloaded"], timeout=WAIT)
    wait(page, lambda: page_state(page, "asr") == "offloaded", "asr offloaded")
    wait(page, lambda: "host tier" in page.find_element(By.ID, "chart-box").text, "the chart")
    click(page, "asr", "load")  # a restore
    d.wait_state("asr", ["ready"], timeout=WAIT)
    wait(page, lambda: page_state(page, "asr") == "ready", "asr restored")
    wait(page, lambda: "restore " in row(page, "asr").text and
         "restore –" not in row(page, "asr").text, "the restore time")
    # Keep-alive: forever, then a duration.
    r = row(page, "asr")
    r.find_element(By.CSS_SELECTOR, "input.ka-input").send_keys("-1")
    r.find_element(By.CSS_SELECTOR, "button.act-keep-alive").click()
    d.wait_until("asr", lambda s: s["keep_alive_s"] == -1, timeout=WAIT)
    wait(page, lambda: "keep-alive forever" in row(page, "asr").text, "keep-alive forever")
    r = row(page, "asr")
    r.find_element(By.CSS_SELECTOR, "input.ka-input").send_keys("90s")
    r.find_element(By.CSS_SELECTOR, "button.act-keep-alive").click()
    d.wait_until("asr", lambda s: s["keep_alive_s"] == 90, timeout=WAIT)
    click(page, "llm", "unload")  # idle: no question asked
    d.wait_state("llm", ["unloaded"], timeout=WAIT)
    wait(page, lambda: page_state(page, "llm") == "unloaded", "llm unloaded")
    assert not page.find_element(By.ID, "confirm-dialog").is_displayed()
    assert console_errors(page) == []


def test_unload_of_a_busy_model_asks(d, page):
    """A lease held over HTTP makes asr busy (in flight 1) until released."""
    d.post("/api/models/asr/load")
    code, lease, _ = d.post("/api/models/asr/acquire", {"ttl": "5m"})
    assert code == 200, lease
    released = False
    try:
        wait(page, lambda: row(page, "asr").find_element(By.CSS_SELECTOR, ".inflight").text == "1",
             "asr in use")
        dialog = page.find_element(By.ID, "confirm-dialog")
        click(page, "asr", "unload")
        wait(page, dialog.is_displayed, "the confirmation")
        assert "asr" in dialog.text and "1 in flight" in dialog.text
        page.find_element(By.ID, "confirm-no").click()
        wait(page, lambda: not dialog.is_displayed(), "the dialog closed")
        time.sleep(0.3)
        assert d.status("asr")["state"] == "ready"  # nothing was asked of the daemon
        click(page, "asr", "unload")
        wait(page, dialog.is_displayed, "the confirmation again")
        page.find_element(By.ID, "confirm-yes").click()
        wait(page, lambda: not dialog.is_displayed(), "the dialog closed")
        # The unload waits for the lease; then it is done.
        assert d.request("DELETE", "/api/leases/" + lease["lease"])[0] == 200
        released = True
        d.wait_state("asr", ["unloaded"], timeout=WAIT)
        wait(page, lambda: page_state(page, "asr") == "unloaded", "asr unloaded")
    finally:
        if not released:
            d.request("DELETE", "/api/leases/" + lease["lease"])
    assert console_errors(page) == []


def test_log_follows_as_text(d, page):
    d.post("/api/models/embed/load")
    Select(page.find_element(By.ID, "log-model")).select_by_value("embed")
    log = page.find_element(By.ID, "log")
    wait(page, lambda: "test_worker embed ready" in log.text, "the log's last lines")
    marker = "/m/embed/infer?<img/src=x/onerror=document.title='owned'><b>bold</b>"
    code, _, _ = d.post(marker, {"x": 1})
    assert code == 200
    wait(page, lambda: "<b>bold</b>" in log.text, "the new log line")
    assert log.find_elements(By.CSS_SELECTOR, "img, b") == []
    assert page.title == f"modelbuf · {d.get('/health')[1]['node']}"  # not 'owned'
    # The line came by the stream, the page was not reloaded.
    assert page.execute_script("return performance.getEntriesByType('navigation').length") == 1
    assert console_errors(page) == []


def test_failed_model_shows_its_error(d, page):
    """A model whose worker exits at once: its state and error on the page."""
    # Not in the module's daemon (a failed model would stay failed): a
    # reload adds one.
    with open(d.cfg, "a") as f:
        f.write(f"  broken:\n    cmd: {worker('--exit-early')}\n")
    os.kill(d.proc.pid, 1)  # SIGHUP
    wait(page, lambda: page_state(page, "broken") == "unloaded", "the added model")
    code, _, _ = d.post("/api/models/broken/load")
    assert code == 502
    wait(page, lambda: page_state(page, "broken") == "failed", "broken failed")
    wait(page, lambda: "exited" in row(page, "broken").text or
         "fatal" in row(page, "broken").text, "its error")
    assert console_errors(page) == []


KEY = "dash-" + "k3y"


def test_api_key_asked_once_and_kept(browser):
    keyed = Daemon(CONFIG + f'api_keys: ["{KEY}"]\n')
    try:
        # The files need no key, the data does.
        for path in ASSETS:
            assert raw(keyed.port, "GET", path)[0] == 200, path
        assert raw(keyed.port, "GET", "/api/models")[0] == 401
        assert raw(keyed.port, "GET", "/dashboard/nope.js")[0] == 401
        assert raw(keyed.port, "POST", "/")[0] == 401
        browser.get(f"http://127.0.0.1:{keyed.port}/")
        dialog = browser.find_element(By.ID, "key-dialog")
        wait(browser, dialog.is_displayed, "the key prompt")
        box = browser.find_element(By.ID, "key-input")
        box.send_keys("wrong-key")
        browser.find_element(By.ID, "key-ok").click()
        wait(browser, lambda: "refused" in browser.find_element(By.ID, "key-text").text,
             "the refused key")
        assert dialog.is_displayed()
        box.send_keys(KEY)
        browser.find_element(By.ID, "key-ok").click()
        wait(browser, lambda: page_state(browser, "asr") == "unloaded", "the models with the key")
        wait(browser, lambda: browser.find_element(By.ID, "live").text == "live", "the stream")
        assert not dialog.is_displayed()
        assert browser.execute_script("return sessionStorage.getItem('modelbuf.apiKey')") == KEY
        # The key works for actions and the log stream too.
        click(browser, "embed", "load")
        auth = {"Authorization": "Bearer " + KEY}
        deadline = time.time() + WAIT
        while keyed.get("/api/models/embed", headers=auth)[1]["state"] != "ready":
            assert time.time() < deadline, "embed never loaded"
            time.sleep(0.05)
        wait(browser, lambda: page_state(browser, "embed") == "ready", "embed ready")
        Select(browser.find_element(By.ID, "log-model")).select_by_value("embed")
        wait(browser, lambda: "test_worker embed ready" in
             browser.find_element(By.ID, "log").text, "the log with the key")
        # Kept for the tab: a reload asks nothing.
        browser.refresh()
        wait(browser, lambda: page_state(browser, "embed") == "ready", "the models after reload")
        assert not browser.find_element(By.ID, "key-dialog").is_displayed()
        # Only the refused requests before the key was given are errors.
        assert console_errors(browser, allow=["401 (Unauthorized)"]) == []
        # The daemon goes away: a banner, and the page keeps trying.
        assert keyed.stop() == 0
        wait(browser, lambda: browser.find_element(By.ID, "banner").is_displayed(), "the banner")
        assert "not answering" in browser.find_element(By.ID, "banner").text
        wait(browser, lambda: browser.find_element(By.ID, "live").text.startswith("reconnecting"),
             "the stream reconnecting")
        browser.get_log("browser")  # connection refused errors are expected now
    finally:
        if keyed.proc.poll() is None:
            keyed.stop()


# ---------------------------------------------------------------------------
# Screenshots for the docs (MB_DASHBOARD_SCREENSHOTS=DIR)

SHOTS_CONFIG = f"""
devices: [{{host: true, budget: 2GiB}}]
host_memory: 1GiB
defaults: {{keep_alive: 10m, host_keep_alive: 30m}}
models:
  whisper:
    cmd: {worker("--alloc-mb", "96")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
  llama:
    cmd: {worker("--alloc-mb", "160", "--slow-start", "600000")}
    start_timeout: 15m
  sdxl:
    cmd: {worker("--alloc-mb", "128")}
    hooks: {{offload: {{path: /offload}}, restore: {{path: /restore}}}}
  embed:
    cmd: {worker("--alloc-mb", "32")}
    keep_alive: -1
  rerank:
    cmd: {worker()}
  broken:
    cmd: {worker("--exit-early")}
"""


def test_screenshots(browser):
    out = os.environ.get("MB_DASHBOARD_SCREENSHOTS")
    if not out:
        pytest.skip("MB_DASHBOARD_SCREENSHOTS=DIR writes the screenshots of docs/DASHBOARD.md")
    os.makedirs(out, exist_ok=True)
    s = Daemon(SHOTS_CONFIG)
    try:
        browser.set_window_size(1440, 1200)
        browser.get(f"http://127.0.0.1:{s.port}/")
        wait(browser, lambda: page_state(browser, "broken") == "unloaded", "the models")
        # About a minute of use, so that the chart has a history.
        s.post("/api/models/embed/load")
        time.sleep(10)
        s.post("/api/models/whisper/load")
        for i in range(3):
            s.post("/m/whisper/infer", {"i": i})
        time.sleep(10)
        s.post("/api/models/sdxl/load")
        time.sleep(15)
        s.post("/api/models/sdxl/offload")
        time.sleep(10)
        s.post("/api/models/broken/load")
        s.post("/api/models/llama/load", {"wait": False})
        s.post("/api/models/embed/acquire", {"ttl": "5m"})  # in use
        wait(browser, lambda: page_state(browser, "llama") == "loading" and
             page_state(browser, "sdxl") == "offloaded" and
             page_state(browser, "broken") == "failed", "the states")
        Select(browser.find_element(By.ID, "log-model")).select_by_value("whisper")
        time.sleep(6)  # the next chart sample, the request in flight seen
        height = browser.execute_script("return document.documentElement.scrollHeight")
        browser.set_window_size(1440, height + 40)  # the whole page
        browser.save_screenshot(os.path.join(out, "dashboard.png"))
        browser.set_window_size(1440, 1000)
        dialog = browser.find_element(By.ID, "confirm-dialog")
        click(browser, "embed", "unload")
        wait(browser, dialog.is_displayed, "the confirmation")
        browser.save_screenshot(os.path.join(out, "dashboard-confirm.png"))
        browser.find_element(By.ID, "confirm-no").click()
    finally:
        s.stop()
    keyed = Daemon(SHOTS_CONFIG + 'api_keys: ["secret"]\n')
    try:
        browser.get(f"http://127.0.0.1:{keyed.port}/")
        wait(browser, browser.find_element(By.ID, "key-dialog").is_displayed, "the key prompt")
        browser.save_screenshot(os.path.join(out, "dashboard-key.png"))
    finally:
        keyed.stop()
        browser.set_window_size(1440, 1200)
        browser.get_log("browser")
