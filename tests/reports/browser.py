"""Render a page in headless Chromium and read back what a person would see.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
commands on file descriptor 3, replies on 4, each JSON message ending in a NUL byte),
so no WebSocket client or browser-automation package is needed. One run loads the page,
waits for its load event, records every console error, uncaught exception and
browser-log error (a blocked resource, a Content-Security-Policy violation), then takes
a screenshot and reads the DOM.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

__all__ = ["Rendered", "find_chromium", "render", "require_chromium"]

INSTALL_HINT = "install chromium (apt-get install -y chromium)"


def find_chromium() -> str | None:
    """``$RELCOMP_CHROMIUM``, else ``chromium`` on the PATH, else Debian's ``/usr/bin/chromium``."""
    candidates = [os.environ.get("RELCOMP_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_chromium() -> str:
    """The Chromium executable; fails the test when it is missing (skips only on request)."""
    path = find_chromium()
    if path is not None:
        return path
    if os.environ.get("RELCOMP_SKIP_BROWSER") == "1":
        pytest.skip(
            f"headless Chromium is not installed and RELCOMP_SKIP_BROWSER=1; {INSTALL_HINT}"
        )
    pytest.fail(
        f"headless Chromium is not installed: {INSTALL_HINT}, "
        "or set RELCOMP_SKIP_BROWSER=1 to skip this check on purpose"
    )


@dataclasses.dataclass
class Rendered:
    """What the browser showed: a PNG screenshot, the errors it logged, the final DOM."""

    screenshot: bytes
    errors: list[str]
    dom: str

    def pixels(self) -> np.ndarray:
        import io

        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.screenshot)).convert("RGB"), dtype=np.float64)

    def headings(self, tag: str = "h2") -> list[str]:
        parser = _Headings(tag)
        parser.feed(self.dom)
        return parser.found


class _Headings(HTMLParser):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag, self.found, self._depth = tag, [], 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == self.tag:
            self._depth += 1
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == self.tag and self._depth:
            self._depth -= 1
            self.found.append("".join(self._text).strip())

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._text.append(data)


class _DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, executable: str, profile: Path, timeout: float) -> None:
        self.timeout = timeout
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()

        def attach_pipes() -> None:  # runs in the child, before exec
            # Copy above 10 first, so that dup2 onto 3 and 4 never collides with the originals.
            high_in = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
            high_out = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self.process = subprocess.Popen(
            [
                executable,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=attach_pipes,
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._read], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError(f"no reply from Chromium within {self.timeout} s")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the debugging pipe (did it start?)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write)
        os.close(self._read)


def _errors(events: list[dict[str, Any]], session: str) -> list[str]:
    errors = []
    for event in events:
        if event.get("sessionId") != session:
            continue
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(
                str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", [])
            )
            errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(
                f"exception: {details.get('text')} {details.get('exception', {}).get('description', '')}"
            )
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(
                f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
            )
    return errors


def render(page: Path, *, width: int = 1280, height: int = 2000, timeout: float = 60.0) -> Rendered:
    """Open ``page`` in headless Chromium (a fresh profile) and return what it rendered."""
    executable = require_chromium()
    with tempfile.TemporaryDirectory(prefix="relcomp-chromium-") as profile:
        browser = _DevTools(executable, Path(profile), timeout)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Page"):
                browser.send(f"{domain}.enable", session=session)
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            browser.wait_for("Page.loadEventFired")
            document = browser.send("DOM.getDocument", {"depth": -1}, session=session)
            dom = browser.send(
                "DOM.getOuterHTML", {"nodeId": document["root"]["nodeId"]}, session=session
            )["outerHTML"]
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
            # Errors reported while the page finished rendering arrive before this reply.
            browser.send("Runtime.evaluate", {"expression": "1"}, session=session)
            errors = _errors(browser.events, session)
        finally:
            browser.close()
    return Rendered(screenshot=base64.b64decode(shot["data"]), errors=errors, dom=dom)
