"""Headless Chromium on a ComfyUI page: start-up, waiting on the page's JS state, dialogs, graph geometry.

Shared by the browser tests (both hosts' frontends: 1.32.9 in 0.3.75, 1.35.9 in 0.8.0) and by
tests/template_builder.py, which lays out the templates in the real frontend.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import requests

# First-run UI that would cover the canvas: the template browser for new users, the release notes.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True}


def start_browser(profile: Path, chromium: str, chromedriver: str, size: tuple[int, int] = (1600, 1000)) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=chromedriver, log_output=str(profile.parent / f"{profile.name}.chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_script_timeout(120)
    return driver


def wait_js(driver: Any, script: str, timeout: float = 60.0, what: str = "") -> None:
    """Poll a JS expression until it is truthy (tested in JS: a class arrives in Python as an empty dict)."""
    deadline = time.monotonic() + timeout
    while True:
        if driver.execute_script(f"return !!({script});"):
            return
        if time.monotonic() > deadline:
            logs = "\n".join(str(e) for e in driver.get_log("browser")[-20:])
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what or script}; browser log:\n{logs}")
        time.sleep(0.1)


def open_app(driver: Any, url: str, node_type: str = "EchoForcingSampler") -> float:
    """Load the ComfyUI page with first-run dialogs off; returns seconds until our node types are registered."""
    for key, value in QUIET_SETTINGS.items():
        requests.post(f"{url}/api/settings/{key}", json=value, timeout=10)
    t0 = time.monotonic()
    driver.get(url + "/")
    wait_js(driver, f"window.app && window.app.graph && window.LiteGraph && "
                    f"window.LiteGraph.registered_node_types[{node_type!r}]", what=f"node type {node_type}")
    wait_js(driver, "window.app.extensionManager && window.app.extensionManager.command", what="the command API")
    # Progress, previews and node outputs come over the websocket; a prompt queued before it is open loses them.
    wait_js(driver, "window.app.api && app.api.socket && app.api.socket.readyState === 1 && app.api.clientId",
            what="the websocket")
    close_dialogs(driver)
    return time.monotonic() - t0


def dialogs(driver: Any) -> list[str]:
    """Text of every open dialog (PrimeVue dialogs and toasts of severity error)."""
    return driver.execute_script("""
        const out = [];
        for (const d of document.querySelectorAll('.p-dialog')) {
          if (d.offsetParent !== null || getComputedStyle(d).display !== 'none') out.push(d.innerText.trim());
        }
        for (const t of document.querySelectorAll('.p-toast-message-error')) out.push('toast: ' + t.innerText.trim());
        return out;""")


def close_dialogs(driver: Any) -> None:
    """Close open dialogs the way a user does (Escape), until none is left."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(4):
        if not dialogs(driver):
            return
        clicked = driver.execute_script("""
            const icons = document.querySelectorAll(
              '.p-dialog button i.pi-times, .p-dialog button i[class*="lucide--x"]');
            for (const i of icons) i.closest('button').click();
            return icons.length;""")
        if not clicked:
            ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        time.sleep(0.3)


def graph_nodes(driver: Any) -> list[dict]:
    """Every node of the open graph: id, type, title, bounding box [x, y, w, h] (title bar included), widgets."""
    return driver.execute_script("""
        return app.graph._nodes.map(n => {
          const b = new Float32Array(4); n.getBounding(b, true);
          return {id: n.id, type: n.type, title: n.title, bounding: Array.from(b), size: Array.from(n.size),
                  widgets: (n.widgets || []).map(w => ({name: w.name,
                                                        value: typeof w.value === 'object' ? null : w.value})),
                  properties: JSON.parse(JSON.stringify(n.properties || {})),
                  known: !!LiteGraph.registered_node_types[n.type], mode: n.mode};
        });""")


def overlaps(nodes: list[dict], margin: float = 0.0) -> list[tuple[str, str]]:
    """Pairs of node titles whose bounding boxes intersect."""
    out = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["bounding"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["bounding"]
            if ax < bx + bw + margin and bx < ax + aw + margin and ay < by + bh + margin and by < ay + ah + margin:
                out.append((a["title"], b["title"]))
    return out


def screenshot(driver: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    time.sleep(0.3)  # let the canvas repaint
    driver.save_screenshot(str(path))
    return path


def browser_errors(driver: Any) -> list[str]:
    """SEVERE console messages since the last call (the log is drained on read)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def as_json(value: Any) -> str:
    return json.dumps(value)
