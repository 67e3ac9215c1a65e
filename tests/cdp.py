"""A small synchronous Chrome DevTools Protocol client for driving headless Chromium in tests.

Chromium is started with ``--remote-debugging-port=0``; the port it picked is read from the
profile's ``DevToolsActivePort`` file, and one page target is driven over its WebSocket with
aiohttp (already a dependency). Only what the tests need: navigate, evaluate, wait for a
condition, type text, click an element, take a screenshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import time
from pathlib import Path
from typing import Any


class CDPError(RuntimeError):
    pass


class Page:
    def __init__(self, loop: asyncio.AbstractEventLoop, ws) -> None:
        self._loop, self._ws, self._id = loop, ws, 0

    def send(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._send(method, params))

    async def _send(self, method: str, params: dict) -> dict:
        self._id += 1
        ident = self._id
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        while True:
            msg = await self._ws.receive_json(timeout=60)
            if msg.get("id") == ident:
                if "error" in msg:
                    raise CDPError(f"{method}: {msg['error']}")
                return msg["result"]

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise CDPError(f"{expression[:80]}: {res['exceptionDetails'].get('text')} "
                           f"{res['exceptionDetails'].get('exception', {}).get('description')}")
        return res["result"].get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.enable")
        self.send("Page.bringToFront")
        self.send("Emulation.setFocusEmulationEnabled", enabled=True)
        self.send("Page.navigate", url=url)
        self.wait_for("document.readyState == 'complete'")

    def wait_for(self, condition: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.eval(f"!!({condition})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{condition!r} not true within {timeout_s} s")
            time.sleep(0.1)

    def type(self, text: str) -> None:
        """Type into the focused element (as an input method commits text)."""
        self.send("Input.insertText", text=text)

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) at the centre of the element."""
        x, y = self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                         f".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self) -> bytes:
        """PNG bytes of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])


class Browser:
    """Headless Chromium for the duration of a ``with`` block (its own throw-away profile)."""

    def __init__(self, executable: str, profile: Path, size: tuple[int, int] = (900, 1100)) -> None:
        self.executable, self.profile, self.size = executable, Path(profile), size
        self._loop = asyncio.new_event_loop()
        self._session = None
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> "Browser":
        self.profile.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [self.executable, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run",
             # keep timers and animation frames running as in a visible, focused tab
             "--disable-renderer-backgrounding", "--disable-background-timer-throttling",
             "--disable-backgrounding-occluded-windows", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise CDPError("chromium did not start (no DevToolsActivePort)")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        return self

    def page(self) -> Page:
        return self._loop.run_until_complete(self._page())

    async def _page(self) -> Page:
        import aiohttp

        self._session = aiohttp.ClientSession()
        async with self._session.get(f"http://127.0.0.1:{self.port}/json/list") as res:
            targets = await res.json(content_type=None)
        target = next(t for t in targets if t["type"] == "page")
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        return Page(self._loop, ws)

    def __exit__(self, *exc) -> None:
        if self._session is not None:
            self._loop.run_until_complete(self._session.close())
        self._loop.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
