"""HTTP route `/echo_forcing/timeline` for the timeline editor (web/js/echo_timeline.js).

The front end sends the timeline text and the parsing options and draws what comes back, so the timeline
language lives in one place (echo_core/timeline.py) and the editor can never disagree with the sampler.

    GET  /echo_forcing/timeline?text=...&fps=16&frames_per_chunk=3&marker_semantics=outgoing
    POST /echo_forcing/timeline   {"text": "...", "fps": 16, "frames_per_chunk": 3, "marker_semantics": "outgoing"}

Answers `Timeline.to_dict()` plus `source` (per scene, the [start, end) character ranges of the scene, its
prompt, tag, seconds, marker and opening tag: echo_core.timeline.source_spans) and `subtitle_source` (HTTP 200),
or `{"error": {"message", "scene_index", "column", "field"}}`:
HTTP 200 for a timeline the parser rejects (the editor shows it inline), HTTP 400 for a malformed request.
ComfyUI also serves every route under `/api`, which is what the front end's `api.fetchApi` calls.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping

# One import identity for the core, as every node file has: the plugin's __init__ puts the repository root on
# sys.path, so `echo_core` here is the same module (and TimelineError the same class) the sampler raises.
from echo_core.errors import EchoError, quote
from echo_core.preflight import check_chunks
from echo_core.timeline import TimelineError, TransitionMode, parse_script, source_spans, subtitle_spans

ROUTE = "/echo_forcing/timeline"
MAX_TEXT_CHARS = 100_000  # a timeline is a few lines; this only stops absurd requests early

# Request field -> converter for values that arrive as query strings. Fields left out use the parser's
# defaults, so the editor of a node that lacks e.g. a marker_semantics input still works.
_OPTIONS: dict[str, Callable[[str], Any]] = {
    "fps": float,
    "frames_per_chunk": int,
    "marker_semantics": str,
    "default_mode": str,
    "total_latent_frames": int,
}


def _error(message: str, *, field: str | None = None, scene_index: int | None = None,
           column: int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "scene_index": scene_index, "column": column, "field": field}}


def _option(name: str, value: Any) -> Any:
    """Convert a query-string value; JSON values are passed on as they are and checked by the parser."""
    if not isinstance(value, str):
        return value
    try:
        return _OPTIONS[name](value.strip())
    except ValueError:
        raise TimelineError(f"{name} must be a number, got {quote(value)}", field=name) from None


def timeline_response(params: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) for one request's parameters; no aiohttp needed, so tests call it directly."""
    text = params.get("text")
    if not isinstance(text, str):
        got = "nothing" if text is None else type(text).__name__
        return 400, _error(f"'text' must be the timeline as a string, got {got}", field="text")
    if len(text) > MAX_TEXT_CHARS:
        return 400, _error(f"'text' is {len(text)} characters long; a timeline may have at most "
                           f"{MAX_TEXT_CHARS}", field="text")
    unknown = sorted(set(params) - set(_OPTIONS) - {"text"})
    if unknown:
        return 400, _error(f"unknown parameter(s) {unknown}; allowed: text, {', '.join(_OPTIONS)}",
                           field=unknown[0])
    try:
        kwargs = {k: _option(k, v) for k, v in params.items() if k in _OPTIONS and v is not None}
        script = parse_script(text)
        timeline = script.schedule(**kwargs)
        check_chunks(timeline.total_chunks, timeline.frames_per_chunk, fps=timeline.fps)  # as the sampler will
        # Where each scene stands in the text: the editor splices its edits there and nowhere else.
        return 200, {**timeline.to_dict(), "source": [{k: None if v is None else list(v) for k, v in s.items()}
                                                      for s in source_spans(script)],
                     "subtitle_source": [list(s) for s in subtitle_spans(text)]}
    except TimelineError as e:
        field = e.field
        if field == "mode":  # the parser checks both choices at once; name the request field that is wrong
            modes = [m.value for m in TransitionMode]
            field = "default_mode" if params.get("default_mode", "smooth") not in modes else "marker_semantics"
        return 200, _error(str(e), field=field, scene_index=e.scene_index, column=e.column)
    except EchoError as e:  # longer than a run may be
        return 200, _error(str(e), field="text")


async def handle_timeline(request: Any) -> Any:
    """aiohttp handler for GET (query string) and POST (JSON object body)."""
    from aiohttp import web

    if request.method == "POST":
        try:
            params = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):  # not JSON, not UTF-8, nested too deep
            params = None
        if not isinstance(params, dict):
            return web.json_response(_error("the request body must be a JSON object such as "
                                            '{"text": "a cat [5s] | a dog [5s#]"}', field="body"), status=400)
    else:
        params = dict(request.query)
    status, body = timeline_response(params)
    return web.json_response(body, status=status)


def register(routes: Any) -> None:
    """Add GET and POST handlers to an aiohttp RouteTableDef (PromptServer.instance.routes)."""
    routes.get(ROUTE)(handle_timeline)
    routes.post(ROUTE)(handle_timeline)


def register_with_host(add_routes: Callable[[Any], None], flag: str) -> bool:
    """Add a module's routes to the running ComfyUI server once (nodes/budget.py uses it too)."""
    # Only a running ComfyUI has imported its top-level `server` module (main.py does, before custom nodes);
    # looking it up instead of importing it keeps tests and tools from dragging in the host's server.
    prompt_server = getattr(sys.modules.get("server"), "PromptServer", None)
    instance = getattr(prompt_server, "instance", None)
    if instance is None:
        return False
    # aiohttp refuses two handlers for one method and path at start-up, so importing this module twice
    # (under two names) must not register twice: the flag lives on the server, not in this module.
    if not getattr(instance, flag, False):
        add_routes(instance.routes)
        setattr(instance, flag, True)
    return True


def _register_with_host() -> bool:
    return register_with_host(register, "_echo_forcing_timeline_route")


REGISTERED = _register_with_host()
