"""Steering edits: what a user may change in a running video's future, and how edits are read and checked.

One edit shape serves every front end: the sampler node's live controls, the HTTP route (nodes/steer_route.py)
and the command line's `--steer FILE` (one JSON object per line, each with the `chunk` before which it applies).

    append  {"prompt", "seconds", "transition"?: smooth|cut|recall}  a scene after the last one
    edit    {"scene": N, "prompt"?, "seconds"?}                       a scene that has not started (1-based)
    smooth  {"prompt", "seconds"}                                      end the current scene now, go to a new one
    cut     {"prompt", "seconds"}                                      the same, entered by a hard cut
    recall  {"scene": N | "auto", "seconds"?, "prompt"?}              end the current scene now, bring back scene N
    stop    {}                                                         end the video after the current chunk

Only shapes and types are checked here (InputError naming the field); whether an edit fits the timeline as it
stands is checked where it is applied (echo_core.steer_timeline), by the timeline parser itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from echo_core.errors import InputError, quote
from echo_core.timeline import MAX_SECONDS

ACTIONS = ("append", "edit", "smooth", "cut", "recall", "stop")
TRANSITIONS = ("smooth", "cut", "recall")
ENDS_SCENE = ("smooth", "cut", "recall", "stop")  # actions that end the current scene at the boundary
MAX_STEER_BYTES = 1_000_000  # a steering script is a few lines
# Characters the timeline language gives a meaning: a prompt holding one would not read back as one scene.
RESERVED = "|;[]"

AUTO_NEEDS_PROMPT = ("an automatic recall ('scene': 'auto') needs the 'prompt' of the scene it enters: routing "
                     "brings back the finished scene most like it")

_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # action -> (required, optional)
    "append": (("prompt", "seconds"), ("transition",)),
    "edit": (("scene",), ("prompt", "seconds")),
    "smooth": (("prompt", "seconds"), ()),
    "cut": (("prompt", "seconds"), ()),
    "recall": (("scene",), ("seconds", "prompt")),
    "stop": ((), ()),
}


class EditRejected(InputError):
    """A well-formed edit with a value that cannot be used (a front end shows it inline; the run goes on)."""


@dataclass(frozen=True)
class Edit:
    """One steering edit; `chunk` (scripts only) is the chunk before whose generation it applies."""

    action: str
    prompt: str | None = None
    seconds: float | None = None
    scene: int | str | None = None  # 1-based scene number; "auto" for a routed recall
    transition: str | None = None  # append: how the new scene is entered (default: the timeline's default)
    chunk: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def parse_edit(body: Mapping[str, Any], *, scripted: bool = False) -> Edit:
    """An Edit from a JSON object (route body or script line); InputError names the offending field."""
    if not isinstance(body, Mapping):
        raise InputError("action", f"an edit is a JSON object, got {type(body).__name__}")
    action = body.get("action")
    if action not in ACTIONS:
        raise InputError("action", f"{quote(action)} is not one of {', '.join(ACTIONS)}")
    required, optional = _FIELDS[action]
    allowed = set(required) | set(optional) | {"action", "prompt_id"} | ({"chunk"} if scripted else set())
    extra = sorted(set(body) - allowed)
    if extra:
        raise InputError(extra[0], f"{action} does not take {extra[0]!r}; it takes "
                                   f"{', '.join(required + optional) or 'no fields'}")
    for name in required:
        if body.get(name) is None:
            raise InputError(name, f"{action} needs {name!r}" + _example(action))
    chunk = None
    if scripted:
        chunk = _whole("chunk", body.get("chunk"), minimum=0)
    prompt = _prompt(body.get("prompt")) if body.get("prompt") is not None else None
    seconds = _seconds(body.get("seconds")) if body.get("seconds") is not None else None
    scene = body.get("scene")
    if scene is not None:
        scene = "auto" if action == "recall" and scene == "auto" else _whole("scene", scene, minimum=1)
    if scripted and action == "recall" and scene == "auto" and prompt is None:
        raise InputError("prompt", AUTO_NEEDS_PROMPT)  # a live edit gets this from the timeline (an inline error)
    if action == "edit" and prompt is None and seconds is None:
        raise EditRejected("prompt", "edit changes a scene's 'prompt' or 'seconds'; give at least one")
    transition = body.get("transition")
    if transition is not None and transition not in TRANSITIONS:
        raise EditRejected("transition", f"{quote(transition)} is not one of {', '.join(TRANSITIONS)}")
    return Edit(action, prompt, seconds, scene, transition, chunk)


def _example(action: str) -> str:
    examples = {"append": '{"action": "append", "prompt": "a dog in the park", "seconds": 5}',
                "edit": '{"action": "edit", "scene": 3, "seconds": 4}',
                "smooth": '{"action": "smooth", "prompt": "the dog runs", "seconds": 5}',
                "cut": '{"action": "cut", "prompt": "a beach at night", "seconds": 5}',
                "recall": '{"action": "recall", "scene": 1}'}
    return f", e.g. {examples[action]}" if action in examples else ""


def _whole(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EditRejected(name, f"must be a whole number >= {minimum}, got {quote(value)}")
    return value


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_SECONDS:
        raise EditRejected("seconds", f"must be a positive number of seconds, at most {MAX_SECONDS:g}, "
                                    f"got {quote(value)}")
    return float(value)


def _prompt(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise EditRejected("prompt", f"must be non-empty text, got {quote(value)}")
    bad = sorted({c for c in value if c in RESERVED})
    if bad:
        raise EditRejected("prompt", f"{quote(value)} holds {' '.join(bad)}: the timeline uses '|', ';', '[' and "
                                   "']' between scenes, subtitles and tags; leave them out of a prompt")
    return " ".join(value.split())


def read_steer_script(text: str, label: str = "steer") -> tuple[Edit, ...]:
    """A steering script: one JSON edit per line with its `chunk`, in chunk order (blank lines and lines starting
    with '#' skipped). Errors read "steer line 3: scene: ..."."""
    edits: list[Edit] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            body = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{label} line {n}", f"not JSON ({e.msg} at column {e.colno}); write one object per "
                                                  'line, e.g. {"chunk": 4, "action": "cut", "prompt": "...", '
                                                  '"seconds": 5}') from None
        try:
            edit = parse_edit(body, scripted=True)
        except InputError as e:
            raise InputError(f"{label} line {n}: {e.field}", e.detail) from None
        if edits and edit.chunk < edits[-1].chunk:  # type: ignore[operator]
            raise InputError(f"{label} line {n}: chunk", f"chunk {edit.chunk} comes before the previous line's "
                                                         f"chunk {edits[-1].chunk}; list edits in chunk order")
        edits.append(edit)
    if not edits:
        raise InputError(label, "the steering script holds no edits; write one JSON object per line")
    return tuple(edits)
