"""Open a page in a real headless browser (Debian's chromium) and report what a reader would see.

Talks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-terminated JSON), so it needs nothing but the
chromium binary: no websocket client, no driver. Used by the report test and to
take the report screenshot in docs/analysis.md.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from lgm.errors import LgmError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("LGM_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class _Pipe:
    def __init__(self, proc, write_fd: int, read_fd: int) -> None:
        self.proc, self.w, self.r = proc, write_fd, read_fd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self.receive(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise LgmError(f"chromium: {method} failed: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def receive(self, deadline: float) -> dict:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LgmError("chromium did not answer in time")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise LgmError("chromium closed the DevTools pipe")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return e
        while True:
            m = self.receive(deadline)
            self.events.append(m)
            if m.get("method") == method:
                return m


def inspect_page(page: str | Path, screenshot: str | Path | None = None, width: int = 1200,
                 timeout: float = 60) -> dict:
    """Load ``page`` from disk in headless chromium; return console errors, failed requests, images, title.

    ``images``: for every <img>, (complete, naturalWidth, naturalHeight, src prefix). ``requests``: every URL
    the page asked for. With ``screenshot``, a full-page PNG is written there.
    """
    exe = find_chromium()
    if exe is None:
        raise LgmError("no chromium found (apt-get install chromium, or set LGM_CHROMIUM)")
    url = Path(page).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="lgm-chromium-")
    # Chromium reads commands on fd 3 and writes on fd 4.
    def child_fds():
        import fcntl

        r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
        os.dup2(r, 3)
        os.dup2(w, 4)
        os.close(r)
        os.close(w)

    args = [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "--disable-extensions",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "about:blank"]
    proc = subprocess.Popen(args, preexec_fn=child_fds, close_fds=False,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    pipe = _Pipe(proc, to_chrome_w, from_chrome_r)
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session)
        pipe.events.clear()
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_for("Page.loadEventFired", timeout)
        probe = ("JSON.stringify({title: document.title, ids: Array.from(document.querySelectorAll('[id]'))"
                 ".map(e => e.id), images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                 "i.naturalHeight, i.getAttribute('src').slice(0, 30)]), height: "
                 "document.documentElement.scrollHeight})")
        state = json.loads(pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                     session=session)["result"]["value"])
        if screenshot is not None:
            h = min(int(state["height"]), 16000)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": h, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=session)
            png = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                            session=session, timeout=timeout)["data"]
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(png))
        events = pipe.events
        console_errors = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
        console_errors += [e["params"] for e in events if e.get("method") == "Runtime.consoleAPICalled"
                           and e["params"].get("type") in ("error", "assert")]
        console_errors += [e["params"]["entry"] for e in events if e.get("method") == "Log.entryAdded"
                           and e["params"]["entry"].get("level") == "error"]
        failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
        requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
        return {"title": state["title"], "ids": state["ids"], "images": state["images"],
                "console_errors": console_errors, "failed_requests": failed, "requests": requests}
    finally:
        try:
            pipe.send("Browser.close", timeout=5)
        except Exception:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(to_chrome_w)
        os.close(from_chrome_r)
        shutil.rmtree(profile, ignore_errors=True)
