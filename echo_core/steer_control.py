"""The steering of one run: edits arrive from any thread, the chunk loop picks the timeline up at each boundary.

A `Steering` goes into `RunInputs.steering`. Front ends call `submit(edit)` (the HTTP route, the node's live
controls) or give a script of timed edits (the CLI's --steer); the run calls `at_boundary(chunk)` before every
chunk and once after the last, where it may wait for more scenes (`when_ends="wait"`, up to `wait_seconds`).

An accepted edit is applied at once to the live timeline with the boundary it will take effect at: the first
chunk that has not begun. Its prompt is encoded when it arrives (`encode`, the run's text encoder), never in the
chunk loop. Noise is drawn per chunk in order and is untouched by edits, so a steered run equals a batch run of
its final text (`text()`) with the same seed - with one limit, reported as `replay_exact`: routing features are
computed over all the timeline's prompts, so a prompt added after an automatic or similarity-weighted recall
already happened would have changed that recall in a batch run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from echo_core.errors import EchoError, InputError
from echo_core.steer_timeline import LiveTimeline
from echo_core.steering import Edit
from echo_core.timeline import MarkerSemantics, Timeline, TransitionMode

Encoder = Callable[[Sequence[str]], Sequence[torch.Tensor]]
WHEN_ENDS = ("stop", "wait")
MAX_WAIT_SECONDS = 3600.0
POLL_SECONDS = 0.05  # how often a waiting run checks for an interrupt


@dataclass(frozen=True)
class TimelineUpdate:
    """What the chunk loop takes at a boundary after edits: the timeline and one text embedding per scene."""

    timeline: Timeline
    contexts: tuple[torch.Tensor, ...]
    routing_features: Any  # a function from prompts to embeddings, or None (keep the run's own)


class Steering:
    """Thread-safe steering of one run (see the module docstring)."""

    def __init__(self, *, encode: Encoder | None = None, encode_routing: Encoder | None = None,
                 when_ends: str = "stop", wait_seconds: float = 0.0, script: Sequence[Edit] = (),
                 default_mode: str = "smooth", marker_semantics: str = "outgoing", text: str | None = None,
                 on_wait: Callable[[], None] | None = None, script_label: str = "steer") -> None:
        if when_ends not in WHEN_ENDS:
            raise InputError("when_timeline_ends", f"{when_ends!r} is not one of {', '.join(WHEN_ENDS)}")
        if isinstance(wait_seconds, bool) or not isinstance(wait_seconds, (int, float)) or \
                not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
            raise InputError("wait_seconds", f"must be a number of seconds from 0 to {MAX_WAIT_SECONDS:g}, "
                                             f"got {wait_seconds!r}")
        self.encode, self.encode_routing = encode, encode_routing
        self.when_ends, self.wait_seconds = when_ends, float(wait_seconds)
        self.default_mode, self.semantics = TransitionMode(default_mode), MarkerSemantics(marker_semantics)
        self.original_text, self.on_wait, self.script_label = text, on_wait, script_label
        self._script = list(script)
        self._lock = threading.Condition()
        self._live: LiveTimeline | None = None
        self._timeline: Timeline | None = None
        self._contexts: dict[str, torch.Tensor] = {}
        self._version = self._delivered = 0
        self._done = 0  # chunks finished
        self._in_progress = False  # a chunk is being generated: edits apply after it
        self._state = "running"
        self._recall_happened = False
        self.replay_exact = True
        self.log: list[dict[str, Any]] = []
        self._check: Callable[[Timeline], None] | None = None

    # ------------------------------------------------------------------------------------------ binding
    def bind(self, timeline: Timeline, contexts: Sequence[torch.Tensor],
             check: Callable[[Timeline], None] | None = None) -> None:
        """Called by the run: its scheduled timeline and embeddings; `check` refuses a timeline the run cannot
        follow (chunk limit, recall sources, routing)."""
        with self._lock:
            if self._live is not None:
                raise RuntimeError("a Steering steers one run")
            self._live = LiveTimeline.from_timeline(timeline, self.default_mode, self.semantics)
            self._timeline = timeline
            self._contexts = {s.prompt: c for s, c in zip(timeline.scenes, contexts)}
            self._check = check

    def _bound(self) -> tuple[LiveTimeline, Timeline]:
        """The live timeline and its schedule; the chunk loop only runs after `bind`."""
        if self._live is None or self._timeline is None:
            raise RuntimeError("Steering.bind must be called before the run's chunk loop")
        return self._live, self._timeline

    # ------------------------------------------------------------------------------------------ front ends
    def submit(self, edit: Edit, *, line: int | None = None) -> dict[str, Any]:
        """Apply `edit` at the next boundary; returns {"accepted", "applies_at_chunk", "timeline"}. Raises
        EchoError (field named) for an edit that does not fit; the run goes on."""
        with self._lock:
            if self._live is None or self._state == "done":
                raise InputError("prompt_id", "the run is not steerable: it has not started or has ended")
            boundary = self._done + 1 if self._in_progress else self._done
            live = self._live.amend(edit, boundary)
            timeline = live.schedule()
            if self._check is not None:
                self._check(timeline)
            fresh = [s.prompt for s in timeline.scenes if s.prompt not in self._contexts]
            if fresh:
                self._encode(fresh)
            if fresh and self._recall_happened:
                self.replay_exact = False
            self._live, self._timeline = live, timeline
            self._version += 1
            entry = {**edit.to_dict(), "requested_at_chunk": self._done, "applied_at_chunk": boundary}
            if line is not None:
                entry["line"] = line
            self.log.append(entry)
            self._lock.notify_all()
            return {"accepted": True, "applies_at_chunk": boundary, "timeline": live.text()}

    def _encode(self, prompts: list[str]) -> None:
        if self.encode is None:
            raise InputError("prompt", "this run has no text encoder to encode new prompts with; steer with the "
                                       "prompts already in the timeline (recall, edit seconds) or run it with one")
        try:
            made = list(self.encode(prompts))
        except EchoError as e:
            raise InputError("prompt", e.detail) from None
        for p, c in zip(prompts, made):
            self._contexts[p] = c[None] if c.ndim == 2 else c

    def status(self) -> dict[str, Any]:
        with self._lock:
            live = self._live
            total = 0 if live is None else live.total_chunks
            scene = 0 if live is None else live.scene_of_chunk(min(self._done, max(total - 1, 0)))
            return {"state": self._state, "chunk": self._done, "total_chunks": total, "scene_index": scene,
                    "timeline": self.text(), "edits": list(self.log)}

    def text(self) -> str:
        """What was (or will be) generated, as timeline text: the original text when nothing was edited."""
        with self._lock:
            if self._live is None:
                return self.original_text or ""
            if not self.log and self.original_text is not None:
                return self.original_text
            return self._live.text()

    # ------------------------------------------------------------------------------------------ chunk loop
    def at_boundary(self, chunk: int) -> TimelineUpdate | None:
        """Before chunk `chunk` (and once after the last): apply due script edits, wait for more scenes when the
        timeline ended and the run waits, then hand over the timeline if it changed."""
        with self._lock:
            self._done, self._in_progress = chunk, False
            self._apply_script(chunk)
            live, _ = self._bound()
            if chunk >= live.total_chunks and not live.stopped:
                self._wait(chunk)
            live, tl = self._bound()  # the wait may have taken edits
            if chunk < live.total_chunks:
                self._in_progress = True
                if live.scenes[live.scene_of_chunk(chunk)].mode is TransitionMode.RECALL:
                    self._recall_happened = True
            else:
                self._state = "done"
            if self._version == self._delivered:
                return None
            self._delivered = self._version
            contexts = tuple(self._contexts[s.prompt] for s in tl.scenes)
            return TimelineUpdate(tl, contexts, self.routing_encoder())

    def chunk_done(self, index: int) -> None:
        """Chunk `index` is finished (called by the run as it hands the chunk out): edits now apply at the next."""
        with self._lock:
            self._done, self._in_progress = index + 1, False

    def routing_encoder(self) -> Any:
        if self.encode_routing is None:
            return None
        enc = self.encode_routing

        def encode(texts: Sequence[str]) -> list[torch.Tensor]:
            return [c[0] if c.ndim == 3 else c for c in enc(list(texts))]
        return encode

    def _apply_script(self, chunk: int) -> None:
        while self._script and self._script[0].chunk == chunk:
            edit = self._script.pop(0)
            try:
                self.submit(edit)
            except EchoError as e:
                raise InputError(f"{self.script_label} edit at chunk {chunk} ({edit.action}): {e.field}",
                                 e.detail) from None
        live, _ = self._bound()
        if self._script and (chunk >= live.total_chunks or live.stopped):
            nxt = self._script[0]
            raise InputError(f"{self.script_label} edit at chunk {nxt.chunk} ({nxt.action}): chunk",
                             f"the video ended after {chunk} chunks (numbered from 0); apply it at chunk "
                             f"{chunk} or earlier")

    def _wait(self, chunk: int) -> None:
        if self.when_ends != "wait" or self._script:
            return
        self._state = "waiting"
        deadline = time.monotonic() + self.wait_seconds
        while chunk >= self._bound()[0].total_chunks and not self._bound()[0].stopped:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._lock.wait(min(POLL_SECONDS, left))
            if self.on_wait is not None:
                self.on_wait()  # an interrupt raises here
        self._state = "running"

    def finish(self) -> None:
        with self._lock:
            self._state = "done"
            self._in_progress = False

    def report(self) -> dict[str, Any]:
        return {"steering": list(self.log), "timeline_text": self.text(), "replay_exact": self.replay_exact}
