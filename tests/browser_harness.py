"""Drive ComfyUI's frontend in a real browser, as a user does: Playwright with the system's
Chromium (Playwright's own browser download is not needed).

Works with the Vue frontend of current ComfyUI (the `comfyui-frontend-package` builds) and with
the older frontend that ComfyUI shipped in its `web/` folder before that (the CI's ComfyUI of
March 2024); `Frontend.legacy` tells which one the page runs.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]


def chromium_path() -> str | None:
    """The system Chromium: IMGEN_CHROMIUM, else chromium or chromium-browser on PATH."""
    env = os.environ.get("IMGEN_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Frontend:
    """One browser page on a ComfyUI server."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url
        self.errors: list[str] = []
        self.messages: list[dict] = []  # what the server told the page over its websocket
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("websocket", lambda ws: ws.on("framereceived", self._received))

    def _received(self, payload):
        if isinstance(payload, str):
            try:
                self.messages.append(json.loads(payload))
            except ValueError:
                pass

    def open(self, timeout: float = 90):
        self.page.goto(self.url)
        self.page.wait_for_function("() => window.app && window.app.graph && document.querySelector('canvas')",
                                    timeout=timeout * 1000)
        self.legacy = not self.page.evaluate("() => !!window.__COMFYUI_FRONTEND_VERSION__")
        self.version = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ || 'web/ of the server'")
        time.sleep(1.5)  # the first-run template browser opens a moment after the graph
        self.close_dialogs()
        return self

    def close_dialogs(self):
        for _ in range(3):
            self.page.keyboard.press("Escape")
            time.sleep(0.2)

    def drop_file(self, name: str, content: bytes | str, mime: str = "application/json"):
        """Drop a file on the canvas, as a user dragging it from their desktop."""
        data = list(content.encode() if isinstance(content, str) else content)
        self.page.evaluate("""([name, bytes, mime]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            const canvas = window.app.canvas.canvas;
            const r = canvas.getBoundingClientRect();
            for (const type of ['dragenter', 'dragover', 'drop'])
                canvas.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true,
                                                          clientX: r.x + 5, clientY: r.y + r.height - 5}));
        }""", [name, data, mime])

    def load_workflow(self, workflow: dict, name: str = "workflow.json", timeout: float = 30):
        """Drop the workflow file on the canvas and wait until the graph holds its nodes."""
        self.drop_file(name, json.dumps(workflow))
        want = sorted(n["id"] for n in workflow["nodes"])
        self.page.wait_for_function("(want) => JSON.stringify(window.app.graph._nodes.map(n => Number(n.id)).sort("
                                    "(a, b) => a - b)) === JSON.stringify(want)", arg=want, timeout=timeout * 1000)
        time.sleep(0.5)

    def nodes(self) -> list[dict]:
        """Every node as the frontend built it: id, type, size, position and widget values by name."""
        return self.page.evaluate("""() => window.app.graph._nodes.map(n => ({
            id: Number(n.id), type: n.type, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
            widgets: Object.fromEntries((n.widgets || []).map(w => [w.name,
                (w.value === undefined || typeof w.value === 'object') ? null : w.value]))}))""")

    def set_widget(self, node_id: int, name: str, value):
        """Choose a widget value, as picking it in the node's dropdown or field does."""
        ok = self.page.evaluate("""([id, name, value]) => {
            const node = window.app.graph.getNodeById(id);
            const w = node && (node.widgets || []).find(w => w.name === name);
            if (!w) return false;
            w.value = value;
            w.callback?.(value, window.app.canvas, node);
            node.setDirtyCanvas?.(true, true);
            return true; }""", [node_id, name, value])
        if not ok:
            raise KeyError(f"node {node_id} has no widget {name!r}")

    def run(self, timeout: float = 30) -> tuple[str, dict]:
        """Press Run (Queue Prompt in the old frontend); returns the prompt id and the prompt the
        frontend sent."""
        button = (self.page.locator("#queue-button") if self.legacy
                  else self.page.get_by_role("button", name="Run", exact=True).first)
        with self.page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST",
                                       timeout=timeout * 1000) as info:
            button.click()
        response = info.value
        body = response.json()
        if "prompt_id" not in body:
            raise AssertionError(f"the server refused the frontend's prompt: {json.dumps(body)[:2000]}")
        return body["prompt_id"], response.request.post_data_json["prompt"]

    def cancel(self):
        """Stop the running prompt from the UI."""
        if self.legacy:
            self.page.get_by_role("button", name="View Queue").click()
            self.page.locator(".comfy-list").get_by_role("button", name="Cancel").first.click()
        else:
            self.page.get_by_role("button", name="Cancel current run").first.click()

    def search_nodes(self, text: str) -> list[str]:
        """Open the node search (double click on the empty canvas), type, return the entries shown.
        Typing starts only once the search box has the focus: keys typed before would reach the
        page's shortcuts ("n" opens the node library) instead. A double click the page was not
        ready for (a dialog or toast still settling) is repeated."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        for attempt in range(4):
            self.close_dialogs()
            x, y = self.empty_spot()
            self.page.mouse.dblclick(x, y)
            try:
                self.page.wait_for_function("document.activeElement?.tagName === 'INPUT'", timeout=3000)
                break
            except PlaywrightTimeout:
                if attempt == 3:
                    raise
        self.page.keyboard.type(text, delay=20)
        time.sleep(1.5)
        selector = (".litesearchbox .lite-search-item" if self.legacy
                    else ".comfy-vue-node-search-container li, .p-autocomplete-list li, [role=option]")
        entries = self.page.locator(selector).all_inner_texts()
        self.page.keyboard.press("Escape")
        return [" ".join(e.split()) for e in entries]

    def empty_spot(self) -> tuple[float, float]:
        """A point of the window where the graph canvas shows, with no node and no panel on top
        (asked of the canvas itself: the pointer is moved there and the graph position read back)."""
        rect = self.page.evaluate("""() => { const r = window.app.canvas.canvas.getBoundingClientRect();
            return [r.left, r.top, Math.min(r.right, innerWidth), Math.min(r.bottom, innerHeight)]; }""")
        left, top, right, bottom = rect
        for fy in (0.85, 0.7, 0.55, 0.4, 0.95):
            for fx in (0.5, 0.35, 0.65, 0.2, 0.8):
                x, y = left + fx * (right - left), top + fy * (bottom - top)
                self.page.mouse.move(x, y)
                free = self.page.evaluate("""([x, y]) => {
                    const c = window.app.canvas;
                    if (document.elementFromPoint(x, y) !== c.canvas) return false;
                    const [gx, gy] = c.graph_mouse;
                    return !window.app.graph.getNodeOnPos(gx, gy); }""", [x, y])
                if free:
                    return x, y
        raise AssertionError("no empty spot of the canvas is visible")

    def to_screen(self, gx: float, gy: float) -> tuple[float, float]:
        """Where a graph position shows in the window, read off the canvas: the graph positions
        under two pointer positions fix the (linear) mapping."""
        left, top, right, bottom = self.page.evaluate("""() => {
            const r = window.app.canvas.canvas.getBoundingClientRect();
            return [r.left, r.top, Math.min(r.right, innerWidth), Math.min(r.bottom, innerHeight)]; }""")
        points = []
        for fx, fy in ((0.3, 0.4), (0.7, 0.8), (0.4, 0.3), (0.6, 0.6), (0.5, 0.5)):
            x, y = left + fx * (right - left), top + fy * (bottom - top)
            if self.page.evaluate("([x, y]) => document.elementFromPoint(x, y) === window.app.canvas.canvas", [x, y]):
                self.page.mouse.move(x, y)
                points.append(((x, y), self.page.evaluate("() => [...window.app.canvas.graph_mouse]")))
            if len(points) == 2:
                break
        ((x0, y0), (g0x, g0y)), ((x1, y1), (g1x, g1y)) = points
        return x0 + (gx - g0x) * (x1 - x0) / (g1x - g0x), y0 + (gy - g0y) * (y1 - y0) / (g1y - g0y)

    def drop_on_node(self, node_id: int, name: str, content: bytes, mime: str):
        """Drop a file on a node, as a user dragging it from their desktop onto it."""
        gx, gy = self.page.evaluate("""(id) => { const n = window.app.graph.getNodeById(id);
            return [n.pos[0] + n.size[0] / 2, n.pos[1] + n.size[1] / 2]; }""", node_id)
        x, y = self.to_screen(gx, gy)
        self.page.evaluate("""([name, bytes, mime, x, y]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([new Uint8Array(bytes)], name, {type: mime}));
            const canvas = window.app.canvas.canvas;
            for (const type of ['dragenter', 'dragover', 'drop'])
                canvas.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true,
                                                          clientX: x, clientY: y}));
        }""", [name, list(content), mime, x, y])

    def player_source(self, node_id: int) -> str:
        """What the audio player of a node plays (empty when it has none or plays nothing)."""
        return self.page.evaluate("""(id) => { const n = window.app.graph.getNodeById(id);
            const w = (n.widgets || []).find(w => w.name === 'audioUI');
            return (w && w.element && w.element.getAttribute('src')) || ''; }""", node_id)

    def frame_graph(self, left: int = 120, top: int = 140, margin: int = 20, types=None) -> dict:
        """Zoom and pan so the whole graph (or its nodes of `types`) fills the window below the
        menus, and hide the overlays (minimap, toasts); returns the window rectangle they occupy,
        for a screenshot."""
        x, y, width, height = self.page.evaluate("""([left, top, margin, types]) => {
            for (const el of document.querySelectorAll('.p-toast, [class*=minimap]')) el.style.display = 'none';
            const c = window.app.canvas;
            (c.deselectAll || c.deselectAllNodes).call(c);
            let x0 = 1e9, y0 = 1e9, x1 = -1e9, y1 = -1e9;
            for (const n of window.app.graph._nodes.filter(n => !types || types.includes(n.type))) {
                x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
                x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]); }
            const s = Math.min((innerWidth - 2 * left) / (x1 - x0), (innerHeight - top - 60) / (y1 - y0));
            c.ds.scale = s; c.ds.offset[0] = left / s - x0; c.ds.offset[1] = top / s - y0;
            c.setDirty(true, true);
            const r = c.canvas.getBoundingClientRect();
            return [r.left + left - margin, r.top + top - margin, (x1 - x0) * s + 2 * margin, (y1 - y0) * s + 2 * margin];
        }""", [left, top, margin, types])
        time.sleep(1)
        return {"x": x, "y": y, "width": width, "height": height}

    def visible_dialog_text(self) -> str:
        """The text of the dialogs on screen (error reports and the like)."""
        return self.page.evaluate("""() => [...document.querySelectorAll(
            '.p-dialog, [role=dialog], .comfy-modal, .comfy-modal-content')]
            .filter(d => d.offsetParent !== null && getComputedStyle(d).visibility !== 'hidden')
            .map(d => d.innerText).join('\\n---\\n')""")

    def screenshot(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path
