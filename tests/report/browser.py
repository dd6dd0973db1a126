"""Open an HTML file in headless Chromium over the DevTools protocol and read back what it shows.

Dependency-free apart from ``websockets``: starts ``chromium --headless --remote-debugging-port=0``
with a throw-away profile, attaches to a new tab, records JavaScript exceptions, console and
log errors and every network request, evaluates expressions in the page and takes full-page
screenshots. Also a command: ``python tests/report/browser.py page.html shot.png``.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    exceptions: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)


class HeadlessChromium:
    """One headless browser with one tab; use as a context manager."""

    def __init__(self, executable: str | None = None, *, width: int = 1280, height: int = 900,
                 timeout_s: float = 60.0) -> None:
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise FileNotFoundError(f"no Chromium found on PATH (tried {', '.join(CHROMIUM_CANDIDATES)})")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self._ids = itertools.count(1)
        self._events: list[dict] = []

    def __enter__(self) -> HeadlessChromium:
        from websockets.sync.client import connect

        self._profile = Path(tempfile.mkdtemp(prefix="mmcompress-chromium-"))
        self._proc = subprocess.Popen(
            [self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
             "--hide-scrollbars", "--mute-audio", f"--user-data-dir={self._profile}",
             "--remote-debugging-port=0", f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace")[-2000:]
                raise RuntimeError(f"chromium exited with {self._proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self._stop()
                raise TimeoutError(f"chromium did not open its DevTools port within {self.timeout_s}s")
            time.sleep(0.1)
        port, path = port_file.read_text().splitlines()[:2]
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=self.timeout_s))
        target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._call("Browser.close")
        except Exception:  # the browser may already be gone; stopping it below is what matters
            pass
        self._stop()

    def _stop(self) -> None:
        if hasattr(self, "_stack"):
            self._stack.close()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    # ---- protocol ----------------------------------------------------------------------------
    def _call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def send(self, method: str, params: dict | None = None) -> dict:
        """A command to the page's session."""
        return self._call(method, params, self._session)

    def _wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        while True:
            for ev in self._events[seen:]:
                if ev.get("method") == method:
                    return ev
            seen = len(self._events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} within {self.timeout_s}s")
            self._events.append(json.loads(self._ws.recv(timeout=remaining)))

    # ---- page --------------------------------------------------------------------------------
    def load(self, url: str, settle_s: float = 0.3) -> PageLoad:
        """Navigate to ``url``, wait for the load event, and report errors and requests seen."""
        self._events.clear()
        self.send("Page.navigate", {"url": url})
        self._wait_event("Page.loadEventFired")
        self.evaluate("document.readyState")
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            try:
                self._events.append(json.loads(self._ws.recv(timeout=max(0.01, end - time.monotonic()))))
            except TimeoutError:
                break
        out = PageLoad()
        for ev in self._events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.console_errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.log_errors.append(f"{p['entry'].get('source')}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                out.requests.append(p.get("request", {}).get("url", ""))
            elif m == "Network.loadingFailed":
                out.failed_requests.append(f"{p.get('errorText')} ({p.get('requestId')})")
        return out

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page (promises awaited)."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails'].get('text')}: {expression[:200]}")
        return r["result"].get("value")

    def screenshot(self, path: Path, *, full_page: bool = True, max_height: int = 16000) -> tuple[int, int]:
        """Write a PNG of the page (whole page by default); return its (width, height) in CSS px."""
        height = self.height
        if full_page:
            metrics = self.send("Page.getLayoutMetrics")
            height = min(max_height, int(metrics["cssContentSize"]["height"]))
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return self.width, height


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python tests/report/browser.py PAGE.html SHOT.png", file=sys.stderr)
        return 2
    page, shot = Path(argv[0]).resolve(), Path(argv[1])
    with HeadlessChromium() as browser:
        load = browser.load(page.as_uri())
        size = browser.screenshot(shot)
    problems = load.exceptions + load.console_errors + load.log_errors + load.failed_requests
    print(f"{shot}: {size[0]}x{size[1]}; {len(load.requests)} requests; problems: {problems or 'none'}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
