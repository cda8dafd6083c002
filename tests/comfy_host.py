"""Test helpers for real ComfyUI hosts: in-process imports and a server subprocess driven over HTTP.

Two hosts: ComfyUI 0.3.75 from scripts/prepare_comfy_host.sh (.cache/comfyui-0.3.75 or $ECHO_COMFY_HOST; it runs
on the repo's .venv, and is also the one imported in-process) and ComfyUI 0.8.0 from
scripts/prepare_comfy_host_080.sh (.cache/comfyui-0.8.0 with its own venv .cache/comfyui-0.8.0-venv).
Nothing here mutates a host tree: each server gets its own --base-directory (custom_nodes, user, output,
temp, input, database) and its own models folder, so tests can run side by side and leave no trace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST_VERSION = "0.3.75"  # the host imported in-process, and the oldest one the suite runs
HOST_VERSIONS = ("0.3.75", "0.8.0")  # every host the server and browser tests run against
PLUGIN_DIR_NAME = "comfyui-echo-forcing"
MODEL_SUBDIRS = ("diffusion_models", "vae", "text_encoders", "loras")
# Top-level module names the host puts on sys.path. If one of them is already imported from somewhere
# else, an in-process import would silently mix the two; we refuse instead.
HOST_TOP_LEVEL = ("comfy", "comfy_api", "comfy_execution", "comfy_extras", "comfy_config", "folder_paths",
                  "nodes", "node_helpers", "latent_preview", "server", "execution", "utils", "app", "protocol")


class ComfyHostMissing(RuntimeError):
    """The prepared host tree is not where the tests look for it."""


def default_host_dir() -> Path:
    env = os.environ.get("ECHO_COMFY_HOST")
    return Path(env).resolve() if env else REPO_ROOT / ".cache" / f"comfyui-{HOST_VERSION}"


def find_host_dir() -> Path:
    host = default_host_dir()
    needed = ("main.py", "comfy/ldm/wan/model.py", "comfyui_version.py")
    missing = [n for n in needed if not (host / n).is_file()]
    if missing:
        raise ComfyHostMissing(
            f"no ComfyUI {HOST_VERSION} host at {host} (missing {', '.join(missing)}). "
            "Run `bash scripts/prepare_comfy_host.sh` (or `bash scripts/setup_env.sh`), "
            "or point ECHO_COMFY_HOST at an existing ComfyUI root.")
    return host


@dataclass(frozen=True)
class Host:
    """A prepared ComfyUI tree and the Python that runs its server."""

    version: str
    root: Path
    python: str


def find_host(version: str) -> Host:
    """The prepared host of one version; raises ComfyHostMissing saying how to prepare it."""
    if version == HOST_VERSION:
        return Host(version, find_host_dir(), sys.executable)
    if version != "0.8.0":
        raise ValueError(f"unknown host version {version!r}; known: {HOST_VERSIONS}")
    root = REPO_ROOT / ".cache" / "comfyui-0.8.0"
    # The venv's python is a symlink to the base interpreter: keep the venv path (never resolve() it).
    python = REPO_ROOT / ".cache" / "comfyui-0.8.0-venv" / "bin" / "python"
    missing = [str(p) for p in (root / ".echo-host-ready", root / "main.py", python) if not p.exists()]
    if missing or not any((python.parent.parent).glob(".echo-venv-*")):
        raise ComfyHostMissing(
            f"no ComfyUI 0.8.0 host at {root} with its venv (missing {', '.join(missing) or 'the venv marker'}). "
            "Run `bash scripts/prepare_comfy_host_080.sh` (it needs shared/hosts/comfyui-0.8.0.tar.gz beside the "
            "checkout, or ECHO_HOSTS_DIR).")
    return Host(version, root, str(python))


def find_gguf_pack() -> Path:
    """ComfyUI-GGUF as scripts/prepare_comfy_gguf.sh left it (.cache/ComfyUI-GGUF, linked into test servers)."""
    pack = REPO_ROOT / ".cache" / "ComfyUI-GGUF"
    if not (pack / "nodes.py").is_file():
        raise ComfyHostMissing(f"no ComfyUI-GGUF at {pack}; run `bash scripts/prepare_comfy_gguf.sh` (or "
                               "scripts/setup_env.sh): it needs shared/hosts/ComfyUI-GGUF-795e451.tar.gz")
    return pack


# ---------------------------------------------------------------------------------------------------------
# In-process use of ComfyUI internals
# ---------------------------------------------------------------------------------------------------------

def import_comfy(host: Path) -> types.SimpleNamespace:
    """Import ComfyUI's model code in this process, forced to CPU.

    comfy.cli_args parses sys.argv only when comfy.options.args_parsing is enabled (main.py enables it);
    left at its default it parses [], so pytest's own argv is never read.
    """
    host = Path(host).resolve()
    for name in HOST_TOP_LEVEL:
        mod = sys.modules.get(name)
        origin = getattr(mod, "__file__", None) or "".join(getattr(mod, "__path__", []) or [])
        if mod is not None and origin and not str(Path(origin).resolve()).startswith(str(host)):
            raise RuntimeError(
                f"module {name!r} is already imported from {origin}, not from the ComfyUI host {host}; "
                f"rename the clashing package or import it under another name")
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))

    import comfy.options

    if comfy.options.args_parsing:
        raise RuntimeError("comfy.options.args_parsing is enabled: importing comfy.cli_args would parse sys.argv")
    from comfy.cli_args import args

    args.cpu = True  # must precede the first import of comfy.model_management, which reads it once
    import comfy.latent_formats
    import comfy.ldm.wan.model
    import comfy.model_detection
    import comfy.model_management
    import comfy.model_patcher
    import comfy.ops
    import comfy.sd
    import comfy.utils

    if comfy.model_management.get_torch_device().type != "cpu":
        raise RuntimeError("comfy.model_management was imported before args.cpu was set; it did not pick the CPU")
    return types.SimpleNamespace(
        host=host, args=args, model_management=comfy.model_management, ops=comfy.ops,
        wan=comfy.ldm.wan.model, model_patcher=comfy.model_patcher, model_detection=comfy.model_detection,
        latent_formats=comfy.latent_formats, sd=comfy.sd, utils=comfy.utils)


# ---------------------------------------------------------------------------------------------------------
# A ComfyUI server subprocess
# ---------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_models_dir(path: Path) -> Path:
    for sub in MODEL_SUBDIRS:
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def write_paths_yaml(yaml_path: Path, models_dir: Path) -> Path:
    # Only model folders: a `custom_nodes` entry here would import every subfolder as a node pack.
    lines = ["echo_forcing_tests:", f"    base_path: {json.dumps(str(models_dir))}", "    is_default: true"]
    lines += [f"    {sub}: {sub}" for sub in MODEL_SUBDIRS]
    yaml_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return yaml_path


class PromptFailed(AssertionError):
    """The server rejected a prompt or finished it with an error."""


@dataclass(frozen=True)
class Preview:
    """One binary preview frame from the websocket."""

    event: int  # protocol.BinaryEventTypes: 1 = PREVIEW_IMAGE, 4 = PREVIEW_IMAGE_WITH_METADATA
    mime: str
    data: bytes
    metadata: Mapping[str, Any] | None = None


def parse_binary_frame(frame: bytes) -> Preview | None:
    if len(frame) < 8:
        return None
    (event,) = struct.unpack(">I", frame[:4])
    if event == 1:  # [event][image type: 1 JPEG, 2 PNG][image]
        (kind,) = struct.unpack(">I", frame[4:8])
        return Preview(event, "image/png" if kind == 2 else "image/jpeg", bytes(frame[8:]))
    if event == 4:  # [event][metadata length][metadata json][image]
        (n,) = struct.unpack(">I", frame[4:8])
        meta = json.loads(frame[8:8 + n].decode("utf-8"))
        return Preview(event, meta.get("image_type", "image/jpeg"), bytes(frame[8 + n:]), meta)
    return None


class WsCollector:
    """Reads /ws for one client_id on a thread and keeps every message and preview frame."""

    def __init__(self, base_url: str, client_id: str | None = None, connect_timeout: float = 10.0):
        import websocket  # websocket-client

        self.client_id = client_id or uuid.uuid4().hex
        ws_url = base_url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        self._ws = websocket.create_connection(ws_url, timeout=connect_timeout)
        self._ws.settimeout(0.5)
        self.messages: list[dict] = []
        self.previews: list[Preview] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"ws-{self.client_id[:8]}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import websocket

        while not self._closed:
            try:
                opcode, data = self._ws.recv_data()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception:  # connection closed (server stopped or close() called)
                break
            with self._cond:
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    self.messages.append(json.loads(data.decode("utf-8")))
                elif opcode == websocket.ABNF.OPCODE_BINARY:
                    preview = parse_binary_frame(data)
                    if preview is not None:
                        self.previews.append(preview)
                self._cond.notify_all()

    def of_type(self, msg_type: str) -> list[dict]:
        with self._cond:
            return [m["data"] for m in self.messages if m.get("type") == msg_type]

    def progress(self) -> list[dict]:
        return self.of_type("progress")

    def wait_for(self, predicate: Callable[["WsCollector"], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"websocket condition not met within {timeout:.0f} s; "
                                       f"got types {[m.get('type') for m in self.messages][-20:]}")
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._closed = True
        try:
            self._ws.close()
        except Exception:
            pass
        self._thread.join(timeout=5)

    def __enter__(self) -> "WsCollector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ComfyServer:
    """`python main.py --cpu ...` in its own process group, with this plugin mounted as a custom node.

    Layout under work_dir: base/ (ComfyUI --base-directory: custom_nodes/, user/, output/, ...),
    models/ (diffusion_models, vae, text_encoders, loras; given through an extra paths yaml), server.log.
    """

    def __init__(self, host_dir: Path, work_dir: Path, *, plugin_dir: Path | None = REPO_ROOT,
                 models_dir: Path | None = None, extra_args: Sequence[str] = (),
                 startup_timeout: float = 120.0, python: str = sys.executable,
                 env: Mapping[str, str] | None = None, extra_custom_nodes: Sequence[Path] = ()):
        self.host_dir = Path(host_dir)
        self.work_dir = Path(work_dir)
        self.base_dir = self.work_dir / "base"
        self.models_dir = make_models_dir(Path(models_dir) if models_dir else self.work_dir / "models")
        self.log_path = self.work_dir / "server.log"
        self.plugin_dir = Path(plugin_dir) if plugin_dir else None
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.python = python
        self.extra_env = dict(env or {})
        self.extra_custom_nodes = tuple(Path(p) for p in extra_custom_nodes)  # other node packs, linked beside ours
        self.port: int | None = None
        self.pid: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._collectors: list[WsCollector] = []

    # -- life cycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        return f"http://127.0.0.1:{self.port}"

    def _prepare_dirs(self) -> Path:
        custom = self.base_dir / "custom_nodes"
        for d in (custom, self.base_dir / "user", self.base_dir / "input", self.base_dir / "output"):
            d.mkdir(parents=True, exist_ok=True)
        # What a fresh install has in input/ (example.png, which LoadImage in templates points at).
        for f in (self.host_dir / "input").glob("*.png"):
            if not (self.base_dir / "input" / f.name).exists():
                shutil.copyfile(f, self.base_dir / "input" / f.name)
        if self.plugin_dir is not None:
            link = custom / PLUGIN_DIR_NAME
            if not link.is_symlink():
                link.symlink_to(self.plugin_dir.resolve(), target_is_directory=True)
        for pack in self.extra_custom_nodes:
            link = custom / pack.name
            if not link.is_symlink():
                link.symlink_to(pack.resolve(), target_is_directory=True)
        return write_paths_yaml(self.work_dir / "extra_model_paths.yaml", self.models_dir)

    def start(self) -> "ComfyServer":
        if self._proc is not None:
            raise RuntimeError("server already started")
        yaml_path = self._prepare_dirs()
        for attempt in range(2):  # a second try covers losing the free port to another process
            self.port = free_port()
            cmd = [self.python, str(self.host_dir / "main.py"), "--cpu", "--listen", "127.0.0.1",
                   "--port", str(self.port), "--disable-auto-launch",
                   "--base-directory", str(self.base_dir),
                   "--extra-model-paths-config", str(yaml_path),
                   # The default database lives inside the host tree; keep it per server.
                   "--database-url", f"sqlite:///{self.base_dir / 'user' / 'comfyui.db'}",
                   *self.extra_args]
            env = dict(os.environ)
            env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
            env.update(self.extra_env)
            self._log_file = open(self.log_path, "ab")
            # start_new_session: the server leads its own process group, so stop() can end it and
            # anything it spawned with one killpg, and a Ctrl-C in the terminal does not reach it.
            self._proc = subprocess.Popen(cmd, cwd=self.base_dir, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                          stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.pid = self._proc.pid
            try:
                self._wait_http()
                return self
            except RuntimeError:
                retry = attempt == 0 and "address already in use" in self.log_text().lower()
                self.stop()
                if not retry:
                    raise
        raise AssertionError("unreachable")

    def _wait_http(self) -> None:
        import requests

        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self._proc.returncode} during start-up; "
                                   f"log tail:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/system_stats", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"ComfyUI did not answer HTTP within {self.startup_timeout:.0f} s; "
                           f"log tail:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        for c in self._collectors:
            c.close()
        self._collectors.clear()
        proc = self._proc
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(proc.pid, sig)  # process group id == pid (start_new_session)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    # The leader is gone; make sure nothing it started lingers in its group.
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    break
                except subprocess.TimeoutExpired:
                    continue
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- diagnostics -------------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory of the server process (field VmHWM gives the peak)."""
        if self.pid is None:
            raise RuntimeError("server not started")
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{field} not in /proc/{self.pid}/status")

    # -- HTTP API -------------------------------------------------------------------------------------
    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        import requests

        r = requests.get(self.url + path, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def object_info(self, node_class: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node_class}" if node_class else ""))

    def post_prompt(self, graph: Mapping[str, Any], client_id: str | None = None) -> str:
        import requests

        body = {"prompt": graph, "client_id": client_id or uuid.uuid4().hex}
        r = requests.post(self.url + "/prompt", json=body, timeout=30)
        if r.status_code != 200:
            raise PromptFailed(f"POST /prompt answered {r.status_code}: {r.text[:4000]}")
        return r.json()["prompt_id"]

    def wait_history(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """The history entry once the prompt finished (success, error or interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None and entry.get("status", {}).get("status_str") is not None:
                return entry
            if not self.alive():
                raise PromptFailed(f"server died while running {prompt_id}; log tail:\n{self.log_tail()}")
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} not finished within {timeout:.0f} s; log tail:\n{self.log_tail()}")

    def run_prompt(self, graph: Mapping[str, Any], timeout: float = 120.0, client_id: str | None = None) -> dict:
        """post_prompt + wait_history, raising PromptFailed with the node's error unless it succeeded."""
        entry = self.wait_history(self.post_prompt(graph, client_id), timeout)
        status = entry["status"]
        if status.get("status_str") != "success":
            errors = [m for m in status.get("messages", []) if m[0] in ("execution_error", "execution_interrupted")]
            raise PromptFailed(f"prompt ended with {status.get('status_str')}: {json.dumps(errors)[:4000]}")
        return entry

    def interrupt(self, prompt_id: str | None = None) -> None:
        import requests

        r = requests.post(self.url + "/interrupt", json={"prompt_id": prompt_id} if prompt_id else {}, timeout=10)
        r.raise_for_status()

    def view(self, filename: str, subfolder: str = "", folder_type: str = "output") -> bytes:
        import requests

        r = requests.get(self.url + "/view", params={"filename": filename, "subfolder": subfolder,
                                                     "type": folder_type}, timeout=30)
        r.raise_for_status()
        return r.content

    def websocket(self, client_id: str | None = None) -> WsCollector:
        collector = WsCollector(self.url, client_id)
        self._collectors.append(collector)
        return collector
