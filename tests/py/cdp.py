"""Drive headless Chromium over the DevTools protocol for the console tests
(tests/console.rs): load a page, wait for a condition in the page, click
like a user (real mouse events at the element's position), type, take a
screenshot, read values back.

Usage: cdp.py PLAN.json  ->  prints {"results": [...]} (one per step).

PLAN: {"chromium": path, "args": [extra chromium args], "steps": [step...]}
  {"goto": url}
  {"wait": js_expression, "timeout": seconds}   until truthy; its value
  {"click": css_selector}
  {"type": css_selector, "text": "..."}
  {"eval": js_expression}                       its value
  {"screenshot": path}
A failed wait prints the page's body text to stderr and exits 1.
Uses aiohttp (the test venv has it) for the WebSocket.
"""

import asyncio
import base64
import json
import re
import subprocess
import sys
import time

import aiohttp


class Page:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0

    async def call(self, method, **params):
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            msg = await self.ws.receive(timeout=60)
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"devtools socket: {msg.type}")
            data = json.loads(msg.data)
            if data.get("id") == my_id:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return data.get("result", {})

    async def eval(self, expr):
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expr}: {r['exceptionDetails'].get('text')} {r['exceptionDetails'].get('exception', {}).get('description', '')}")
        return r.get("result", {}).get("value")


def devtools_url(proc, deadline):
    pattern = re.compile(r"DevTools listening on (ws://\S+)")
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        m = pattern.search(line.decode(errors="replace"))
        if m:
            return m.group(1)
    raise RuntimeError("chromium did not announce its DevTools endpoint")


async def run(plan):
    args = [plan["chromium"], *plan.get("args", []), "--remote-debugging-port=0", "about:blank"]
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    results = []
    try:
        browser = devtools_url(proc, time.time() + 60)
        port = browser.split("//", 1)[1].split("/", 1)[0]
        async with aiohttp.ClientSession() as http:
            page_ws = None
            deadline = time.time() + 30
            while page_ws is None and time.time() < deadline:
                async with http.get(f"http://{port}/json/list") as r:
                    for t in await r.json():
                        if t.get("type") == "page":
                            page_ws = t["webSocketDebuggerUrl"]
                if page_ws is None:
                    await asyncio.sleep(0.1)
            async with http.ws_connect(page_ws, max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                await page.call("Runtime.enable")
                for step in plan["steps"]:
                    results.append(await do(page, step))
    finally:
        proc.kill()
        proc.wait()
    return results


async def do(page, step):
    if "goto" in step:
        await page.call("Page.navigate", url=step["goto"])
        return None
    if "wait" in step:
        deadline = time.time() + step.get("timeout", 30)
        while True:
            try:
                value = await page.eval(step["wait"])
            except RuntimeError:
                value = None
            if value:
                return value
            if time.time() > deadline:
                text = await page.eval("document.body ? document.body.innerText : ''")
                sys.stderr.write(f"timed out waiting for: {step['wait']}\npage text:\n{text}\n")
                sys.exit(1)
            await asyncio.sleep(0.1)
    if "click" in step:
        sel = json.dumps(step["click"])
        box = await page.eval(
            f"(function(){{var e=document.querySelector({sel}); if(!e) return null; e.scrollIntoView({{block:'center'}});"
            f"var r=e.getBoundingClientRect(); return [r.left+r.width/2, r.top+r.height/2];}})()"
        )
        if not box:
            raise RuntimeError(f"nothing to click at {step['click']}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            await page.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, **extra)
        return [x, y]
    if "type" in step:
        sel = json.dumps(step["type"])
        await page.eval(f"document.querySelector({sel}).focus()")
        await page.call("Input.insertText", text=step["text"])
        return None
    if "eval" in step:
        return await page.eval(step["eval"])
    if "screenshot" in step:
        shot = await page.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(step["screenshot"], "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        return step["screenshot"]
    raise RuntimeError(f"unknown step {step}")


def main():
    with open(sys.argv[1]) as f:
        plan = json.load(f)
    results = asyncio.run(run(plan))
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
