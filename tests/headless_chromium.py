"""Open a page in headless Chromium and watch it through the DevTools protocol (CDP) over a pipe:
every request the page makes, every console message, uncaught exception and browser log entry,
plus JavaScript evaluation and screenshots. Standard library only (no Selenium, no chromedriver,
no Playwright download); the browser is Debian's `chromium` (`apt-get install chromium`).

Networking is off at the browser too: every host name resolves to nothing and the proxy is a
closed port, so a page that tried to fetch something fails (and the attempt is still seen, since
CDP reports a request before it is resolved).

    python tests/headless_chromium.py page.html shot.png [width] [height]   # a screenshot by hand
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
OFFLINE_FLAGS = ['--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost', "--proxy-server=http://127.0.0.1:9",
                 "--proxy-bypass-list=<-loopback>", "--disable-background-networking", "--disable-component-update",
                 "--disable-domain-reliability", "--disable-sync", "--no-first-run", "--no-default-browser-check",
                 "--disable-features=MediaRouter,OptimizationHints,Translate", "--metrics-recording-only"]


def find_browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with one page attached; use as a context manager."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0):
        exe = find_browser()
        if exe is None:
            raise FileNotFoundError("no chromium found (apt-get install chromium)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="promptrl-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def pipes_as_fd3_fd4():  # --remote-debugging-pipe: the browser reads fd 3 and writes fd 4
            a = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [exe, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                *OFFLINE_FLAGS, "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=pipes_as_fd3_fd4, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.session = None
        self.events: list[dict] = []
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Network", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    # --- the protocol: JSON messages separated by NUL bytes ---------------------------------------
    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self, timeout: float | None = None) -> dict:
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no message from chromium in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise CDPError("chromium closed the pipe: " + self.proc.stderr.read().decode(errors="replace")[-2000:])
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        msg = json.loads(raw)
        if "method" in msg:
            self.events.append(msg)
        return msg

    def wait_for(self, method: str, timeout: float | None = None) -> dict:
        seen = len(self.events)
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while True:
            for e in self.events[seen:]:
                if e["method"] == method:
                    return e
            seen = len(self.events)
            self._read(max(0.01, deadline - time.time()))

    def pump(self, seconds: float) -> None:
        """Collect events for a while (late requests, console messages)."""
        deadline = time.time() + seconds
        while time.time() < deadline:
            try:
                self._read(deadline - time.time())
            except TimeoutError:
                return

    # --- what a test asks ----------------------------------------------------------------------------
    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float | None = None) -> None:
        self.send("Page.navigate", {"url": url})
        self.wait_for("Page.loadEventFired", timeout)
        deadline = time.time() + (self.timeout if timeout is None else timeout)
        while not self.evaluate(ready):
            if time.time() > deadline:
                raise TimeoutError(f"page not ready: {ready}")
            self.pump(0.2)
        self.pump(0.5)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise CDPError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, and browser log entries of level
        warning or error (failed loads, blocked requests, CSP, deprecations)."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p["type"] in ("error", "warning", "assert"):
                out.append(f"console.{p['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif e["method"] == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out.append(f"log.{p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        return out

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self.proc.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    page, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    width, height = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (1280, 900)
    with Browser(width, height) as b:
        b.open(page.as_uri())
        b.screenshot(out, full_page=len(sys.argv) > 5 and sys.argv[5] == "full")
        print("requests:", b.requests())
        print("errors:", b.errors())
