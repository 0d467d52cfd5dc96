"""The built-in chat page (GET /, docs/chat-page.md).

Plain HTTP: the page is HTML with a Content-Security-Policy whose hashes match its inline script
and style, HEAD works, it needs no API key, and --no-ui turns it off (404).

In a browser: headless Chromium (Debian's chromium and chromium-driver, scripts/install-deps)
driven by selenium (scripts/python-env) uses the page as a person would. The model name shows;
a message streams its answer into the page piece by piece, then TTFT and tok/s show; Stop
aborts the stream and the daemon cancels the sequence; with --api-key the page asks for the
key, keeps it, and the answer streams.
"""
import base64
import hashlib
import os
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest

from conftest import MODEL_NAME, SOURCE_DIR, Daemon

PAGE = os.path.join(SOURCE_DIR, "server", "ui", "chat.html")
CHROMIUM = os.environ.get("TANDEM_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("TANDEM_CHROMEDRIVER", "/usr/bin/chromedriver")
# Generous: the answer comes from the real model on 2 shared cores, while ctest runs other
# suites beside this one.
WAIT_S = 180


def get(url, method="GET", headers=None):
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def csp_hash(page, tag):
    """The CSP hash source of the text inside the page's one <tag> element."""
    m = re.search(rb"<" + tag + rb">(.*?)</" + tag + rb">", page, re.S)
    assert m, f"no <{tag.decode()}> in the page"
    return "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"


def test_page_is_html_with_its_headers(daemon):
    status, headers, body = get(daemon.url + "/")
    assert status == 200, body[:300]
    with open(PAGE, "rb") as f:
        assert body == f.read(), "GET / is not server/ui/chat.html byte for byte"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Cache-Control"] == "no-cache"
    csp = [d.strip() for d in headers["Content-Security-Policy"].split(";")]
    assert "default-src 'none'" in csp, csp
    assert f"script-src {csp_hash(body, b'script')}" in csp, csp
    assert f"style-src {csp_hash(body, b'style')}" in csp, csp
    assert "connect-src 'self'" in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    assert "unsafe-inline" not in headers["Content-Security-Policy"]
    # Self-contained: nothing is loaded from another origin.
    assert not re.search(rb"(src|href)\s*=\s*[\"']?(https?:)?//", body), "external URL in page"

    status, headers, body = get(daemon.url + "/", method="HEAD")
    assert status == 200 and body == b""
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    with open(PAGE, "rb") as f:
        assert int(headers["Content-Length"]) == len(f.read())

    # Only GET and HEAD: there is nothing else at /.
    req = urllib.request.Request(daemon.url + "/", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=60)
    assert e.value.code == 404


def test_page_needs_no_key_and_no_ui_turns_it_off():
    d = Daemon("--api-key", "page-key", "--no-ui")
    try:
        status, _, body = get(d.url + "/")
        assert status == 404, body[:300]
        assert b"unknown_url" in body
    finally:
        assert d.terminate() == 0
    d = Daemon("--api-key", "page-key")
    try:
        status, headers, _ = get(d.url + "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        status, _, _ = get(d.url + "/v1/models")
        assert status == 401
    finally:
        assert d.terminate() == 0


# --- In a browser ----------------------------------------------------------------------------


@pytest.fixture
def browser():
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        assert shutil.which(path), \
            f"{path} is missing: install Debian's {pkg} (scripts/install-deps)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # with the driver's path too, selenium looks up nothing
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, what, predicate, timeout=WAIT_S):
    """Waits for predicate(driver) to be truthy; on time-out fails naming `what`, with the page's
    text and console."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text
        pytest.fail(f"chat page: no {what} after {timeout} s.\npage text:\n{body}\n"
                    f"console:\n{console(driver)}")


def console(driver):
    try:
        return "\n".join(e["message"] for e in driver.get_log("browser"))
    except Exception as e:  # noqa: BLE001 (the log is for the failure message only)
        return f"(no console log: {e})"


def text_of(driver, css):
    els = driver.find_elements("css selector", css)
    return els[-1].text if els else ""


def set_field(driver, element_id, value):
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(str(value))


def watch_answer(driver):
    """Records the length of the assistant's text at every change, in window.__lengths, so the
    test can tell tokens that render as they arrive from an answer that appears whole."""
    driver.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const t = document.querySelectorAll('.msg.assistant .text');
          if (t.length) window.__lengths.push(t[t.length - 1].textContent.length);
        }).observe(document.getElementById('messages'),
                   {childList: true, subtree: true, characterData: true});
    """)


def send(driver, message, max_tokens, temperature):
    set_field(driver, "max-tokens", max_tokens)
    set_field(driver, "temperature", temperature)
    driver.find_element("id", "prompt").send_keys(message)
    driver.find_element("id", "send").click()


def assert_streamed_answer(driver):
    answer = wait(driver, "streamed answer text",
                  lambda d: text_of(d, ".msg.assistant .text").strip())
    stats = wait(driver, "TTFT and tok/s after the answer",
                 lambda d: text_of(d, ".msg.assistant .stats"))
    assert "TTFT" in stats and "tok/s" in stats, stats
    div = driver.find_elements("css selector", ".msg.assistant")[-1]
    assert float(div.get_attribute("data-ttft-ms")) > 0, stats
    assert float(div.get_attribute("data-tokens-per-s")) > 0, stats
    lengths = [n for n in driver.execute_script("return window.__lengths") if n > 0]
    assert len(set(lengths)) >= 2, f"the answer appeared whole, not streamed: {lengths}"
    assert "Content Security Policy" not in console(driver), console(driver)
    return answer


def test_browser_chat_streams_an_answer(daemon, browser):
    browser.get(daemon.url + "/")
    wait(browser, f"model name '{MODEL_NAME}'",
         lambda d: MODEL_NAME in d.find_element("id", "model").text)
    watch_answer(browser)
    send(browser, "Write three sentences about the sea.", max_tokens=32, temperature=0)
    assert_streamed_answer(browser)
    # A second turn sends the whole conversation, and is answered too.
    send(browser, "Now one more.", max_tokens=8, temperature=0)
    wait(browser, "stats of the second answer",
         lambda d: len(d.find_elements("css selector", ".msg.assistant .stats")) == 2)
    assert not browser.find_elements("css selector", ".msg .error"), text_of(browser, "body")
    browser.find_element("id", "new-chat").click()
    assert browser.find_elements("css selector", ".msg") == []


def test_browser_stop_aborts_the_stream(daemon, browser):
    cancelled = 'tandem:sequences_aborted_total{reason="cancelled"}'
    before = daemon.metrics().get(cancelled, 0)
    browser.get(daemon.url + "/")
    wait(browser, "model name", lambda d: MODEL_NAME in d.find_element("id", "model").text)
    # Greedy, so the answer is the same every run, and far longer than the time to press Stop.
    send(browser, "Write a very long story about a dragon and a knight.", max_tokens=4000,
         temperature=0)
    wait(browser, "streamed answer text", lambda d: text_of(d, ".msg.assistant .text").strip())
    browser.find_element("id", "stop").click()
    stats = wait(browser, "'stopped' after Stop", lambda d: text_of(d, ".msg.assistant .stats"))
    assert "stopped" in stats, stats
    assert browser.find_element("id", "send").is_enabled()
    # The daemon saw the connection close and cancelled the sequence.
    deadline = time.time() + 30
    while time.time() < deadline and daemon.metrics().get(cancelled, 0) <= before:
        time.sleep(0.1)
    m = daemon.metrics()
    assert m.get(cancelled, 0) == before + 1, m
    assert m["tandem:num_requests_running"] == 0, m


def test_browser_asks_for_the_api_key(browser):
    server = Daemon("--api-key", "s3cret-key")
    try:
        browser.get(server.url + "/")
        wait(browser, "API key prompt", lambda d: d.find_element("id", "api-key").is_displayed())
        # A wrong key is refused, and the page asks again.
        browser.find_element("id", "api-key").send_keys("wrong")
        browser.find_element("id", "key-submit").click()
        wait(browser, "'refused' after a wrong key",
             lambda d: "refused" in d.find_element("id", "key-note").text)
        browser.find_element("id", "api-key").send_keys("s3cret-key")
        browser.find_element("id", "key-submit").click()
        wait(browser, "model name after the key",
             lambda d: MODEL_NAME in d.find_element("id", "model").text)
        assert not browser.find_element("id", "key-form").is_displayed()
        assert browser.execute_script(
            "return sessionStorage.getItem('tandem-api-key')") == "s3cret-key"
        watch_answer(browser)
        send(browser, "Say hello.", max_tokens=24, temperature=0)
        assert_streamed_answer(browser)
    finally:
        assert server.terminate() == 0
