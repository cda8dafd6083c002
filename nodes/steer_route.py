"""HTTP route `/echo_forcing/steer`: steer a running Echo-Forcing Sampler by its prompt id (live controls, API).

The sampler registers its run's steering (echo_core.steer_control.Steering) under the prompt id while it runs;
edits are checked by the core (the timeline parser included) and take effect at the next chunk boundary.

    POST /echo_forcing/steer  {"prompt_id": str, "action": ..., ...}
        append  {"prompt": str, "seconds": number, "transition"?: "smooth"|"cut"|"recall"}  (how it is entered)
        edit    {"scene": int (1-based, not started), "prompt"?: str, "seconds"?: number}
        smooth | cut  {"prompt": str, "seconds": number}   end the current scene now, go to a new scene
        recall  {"scene": int | "auto", "seconds"?: number, "prompt"?: str (needed with "auto")}
        stop    {}
      -> 200 {"accepted": true, "applies_at_chunk": int, "timeline": text as it now stands}
         200 {"error": {"message", "field"}}  an edit the parser or the run refuses: a value that cannot be used
             (a prompt with '|;[]', seconds <= 0, a scene that has started or not finished, ...); the run goes on
         400 {"error": ...}  a malformed request (not a JSON object, unknown action or field, a required field
             missing);  404 {"error": ...}  no steerable run has that prompt id
    GET /echo_forcing/steer?prompt_id=...
      -> 200 {"state": "running"|"waiting"|"done", "chunk": int, "total_chunks": int, "scene_index": int (0-based),
              "timeline": text, "edits": [...]}   or 404

Messages from the sampler (PromptServer.instance.send_sync, to every client):
    "echo_forcing.progress"        {"prompt_id", "node", "timeline_node", "chunk", "total_chunks", "scene_index",
                                    "timeline"}  after every chunk
    "echo_forcing.timeline_final"  {"prompt_id", "node", "timeline_node", "timeline"}  when the run ends: the text
                                    to write into the Prompt Timeline widget (same seed + that text = same video)
`node` is the sampler's unique id, `timeline_node` the Prompt Timeline node's that fed it (None if unknown).
ComfyUI also serves every route under `/api`, which is what the front end's `api.fetchApi` calls.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from echo_core.errors import EchoError
from echo_core.steer_control import Steering
from echo_core.steering import EditRejected, parse_edit

from .timeline_route import register_with_host

ROUTE = "/echo_forcing/steer"
PROGRESS, FINAL = "echo_forcing.progress", "echo_forcing.timeline_final"


@dataclass(frozen=True)
class SteeredRun:
    steering: Steering
    node: str | None
    timeline_node: str | None


_RUNS: dict[str, SteeredRun] = {}
_LOCK = threading.Lock()


def _error(message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "field": field}}


@contextmanager
def registered(prompt_id: str | None, run: SteeredRun) -> Iterator[None]:
    """Steerable under `prompt_id` while the block runs (nothing to register without a prompt id)."""
    if prompt_id is None:
        yield
        return
    with _LOCK:
        _RUNS[prompt_id] = run
    try:
        yield
    finally:
        with _LOCK:
            if _RUNS.get(prompt_id) is run:
                del _RUNS[prompt_id]


def _find(params: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | SteeredRun:
    prompt_id = params.get("prompt_id")
    if not isinstance(prompt_id, str) or not prompt_id:
        return 400, _error("'prompt_id' must be the id /prompt answered when the workflow was queued",
                           "prompt_id")
    with _LOCK:
        run = _RUNS.get(prompt_id)
    if run is None:
        return 404, _error(f"no steerable run has prompt id {prompt_id!r}: it has not started, has ended, or has "
                           "no Echo-Forcing Sampler", "prompt_id")
    return run


def steer_response(method: str, params: Any) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one request; no aiohttp needed, so tests call it directly."""
    if not isinstance(params, Mapping):
        return 400, _error('the request body must be a JSON object such as {"prompt_id": "...", "action": "stop"}',
                           "body")
    found = _find(params)
    if isinstance(found, tuple):
        return found
    if method == "GET":
        return 200, found.steering.status()
    try:
        edit = parse_edit(params)
    except EditRejected as e:  # well-formed, but a value the timeline cannot take: shown inline
        return 200, _error(str(e), e.field)
    except EchoError as e:  # a request the contract does not allow (action, fields)
        return 400, _error(str(e), e.field)
    try:
        return 200, found.steering.submit(edit)
    except EchoError as e:  # the run cannot take it: shown inline, the run goes on
        return 200, _error(str(e), e.field)


async def handle_steer(request: Any) -> Any:
    from aiohttp import web

    if request.method == "POST":
        try:
            params = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            params = None
    else:
        params = dict(request.query)
    # Off the event loop: an accepted edit encodes its prompt (the text encoder) before it answers.
    loop = asyncio.get_running_loop()
    status, body = await loop.run_in_executor(None, steer_response, request.method, params)
    return web.json_response(body, status=status)


def register(routes: Any) -> None:
    routes.get(ROUTE)(handle_steer)
    routes.post(ROUTE)(handle_steer)


def send(event: str, data: dict[str, Any]) -> None:
    """A message to every front end (nothing outside a running ComfyUI)."""
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    if server is not None:
        server.send_sync(event, data)


def progress_message(prompt_id: str | None, run: SteeredRun) -> dict[str, Any]:
    s = run.steering.status()
    return {"prompt_id": prompt_id, "node": run.node, "timeline_node": run.timeline_node, "chunk": s["chunk"],
            "total_chunks": s["total_chunks"], "scene_index": s["scene_index"], "timeline": s["timeline"]}


def final_message(prompt_id: str | None, run: SteeredRun) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "node": run.node, "timeline_node": run.timeline_node,
            "timeline": run.steering.text()}


def executing_ids() -> tuple[str | None, str | None]:
    """(prompt id, node id) of the node now executing: the executor's context (0.3.75 and 0.8.0 both set it),
    else the server's last prompt id."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        context = None
    else:
        context = get_executing_context()
    if context is not None:
        return context.prompt_id, context.node_id
    server = getattr(getattr(sys.modules.get("server"), "PromptServer", None), "instance", None)
    return getattr(server, "last_prompt_id", None), None


REGISTERED = register_with_host(register, "_echo_forcing_steer_route")
