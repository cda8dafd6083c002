"""A timeline whose future can be amended between chunks, and the text that says what was generated.

The live timeline is a list of scenes with whole chunk counts. An edit at boundary B (the first chunk not yet
begun) may change scenes that start at B or later, and may end the scene of chunk B-1 at B; nothing before B
moves (checked on every edit). After each edit the state is written as timeline text and parsed and scheduled
again by the one parser (echo_core.timeline), so the run always follows a timeline that text schedules to, and
the final text reproduces the run: `parse_script(text).schedule(...)` gives these chunks exactly.

Durations in that text are seconds chosen to schedule to exactly the generated chunks: a chunk is
`temporal_compression * frames_per_chunk / fps` seconds (0.75 s at 16 fps), written with as few decimals as make
`int(seconds * fps / (tc * fpc))` come out at the chunk count.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from echo_core.errors import InputError
from echo_core.steering import AUTO_NEEDS_PROMPT, Edit
from echo_core.timeline import (
    MarkerSemantics,
    Timeline,
    TimelineError,
    TransitionMode,
    parse_script,
)

MODES = {"smooth": TransitionMode.SMOOTH, "cut": TransitionMode.HARDCUT, "recall": TransitionMode.RECALL}


@dataclass(frozen=True)
class LiveScene:
    prompt: str
    chunks: int
    mode: TransitionMode | None  # how the scene is entered; None for the first
    recall_source: int | None = None  # 0-based scene a recall brings back by hand
    recall_name: str | None = None  # a saved scene recalled by name (kept from the original text)
    subtitle: str = ""


@dataclass(frozen=True)
class LiveTimeline:
    """The scenes as they now stand, plus what writing them as text needs."""

    scenes: tuple[LiveScene, ...]
    fps: float
    frames_per_chunk: int
    temporal_compression: int = 4
    default_mode: TransitionMode = TransitionMode.SMOOTH
    semantics: MarkerSemantics = MarkerSemantics.OUTGOING
    opening: str | None = None  # "[@name]" / "[@]" of the first scene, as a text tag
    stopped: bool = False  # a stop edit: nothing may be added any more

    @classmethod
    def from_timeline(cls, tl: Timeline, default_mode: TransitionMode | str = TransitionMode.SMOOTH,
                      semantics: MarkerSemantics | str = MarkerSemantics.OUTGOING) -> "LiveTimeline":
        scenes = []
        for s in tl.scenes:
            t = tl.transitions[s.index - 1] if s.index else None
            scenes.append(LiveScene(s.prompt, s.num_chunks, None if t is None else t.mode,
                                    None if t is None else t.recall_source, None if t is None else t.recall_name,
                                    tl.subtitles[s.index]))
        opening = None if tl.opening is None else f"[@{tl.opening.recall_name or ''}]"
        return cls(tuple(scenes), tl.fps, tl.frames_per_chunk, tl.temporal_compression,
                   TransitionMode(default_mode), MarkerSemantics(semantics), opening)

    @property
    def total_chunks(self) -> int:
        return sum(s.chunks for s in self.scenes)

    def start_of(self, index: int) -> int:
        return sum(s.chunks for s in self.scenes[:index])

    def scene_of_chunk(self, chunk: int) -> int:
        pos = 0
        for i, s in enumerate(self.scenes):
            pos += s.chunks
            if chunk < pos:
                return i
        return len(self.scenes) - 1

    def chunks_for(self, seconds: float) -> int:
        """A duration in chunks, by the parser's own rule (floored, at least one)."""
        return max(1, int(seconds * self.fps / (self.temporal_compression * self.frames_per_chunk)))

    # ------------------------------------------------------------------------------------------ edits
    def amend(self, edit: Edit, boundary: int) -> "LiveTimeline":
        """The timeline after `edit` applied at `boundary`; InputError (field named) when it does not fit."""
        if self.stopped:
            raise InputError("action", "the run was stopped; it takes no more edits")
        scenes = list(self.scenes)
        cur = self.scene_of_chunk(boundary - 1) if boundary > 0 else -1
        if edit.action in ("smooth", "cut", "recall", "stop"):
            if boundary == 0:
                raise InputError("action", f"{edit.action} ends the current scene, but nothing has been generated "
                                           "yet; use append or edit before the first chunk")
            scenes[cur] = replace(scenes[cur], chunks=boundary - self.start_of(cur))  # ends now (whole chunks)
        if edit.action == "stop":
            return replace(self, scenes=tuple(scenes[:cur + 1]), stopped=True)
        if edit.action == "append":
            mode = MODES[edit.transition] if edit.transition else self.default_mode
            scenes.append(LiveScene(edit.prompt, self.chunks_for(edit.seconds), mode))  # type: ignore[arg-type]
        elif edit.action == "edit":
            j = int(edit.scene) - 1  # type: ignore[arg-type]
            if j >= len(scenes):
                raise InputError("scene", f"scene {j + 1} does not exist; the timeline has scenes 1 to {len(scenes)}")
            if self.start_of(j) < boundary:
                raise InputError("scene", f"scene {j + 1} has started (chunk {self.start_of(j)}; the next edit applies "
                                          f"at chunk {boundary}); only scenes that have not started can change")
            s = scenes[j]
            scenes[j] = replace(s, prompt=edit.prompt or s.prompt,
                                chunks=s.chunks if edit.seconds is None else self.chunks_for(edit.seconds))
        else:  # a new scene right after the current one; the scenes planned after it follow it
            if edit.action == "recall":
                source = None if edit.scene == "auto" else int(edit.scene) - 1  # type: ignore[arg-type]
                if source is None and edit.prompt is None:
                    raise InputError("prompt", AUTO_NEEDS_PROMPT)
                if source is not None and source > cur:
                    raise InputError("scene", f"scene {source + 1} has not finished; recall one of scenes 1 to "
                                              f"{cur + 1} (or 'auto')")
                prompt = edit.prompt or scenes[source].prompt  # type: ignore[index]
                chunks = self.chunks_for(edit.seconds) if edit.seconds is not None else \
                    scenes[source if source is not None else cur].chunks
                new = LiveScene(prompt, chunks, TransitionMode.RECALL, source)
            else:
                new = LiveScene(edit.prompt, self.chunks_for(edit.seconds), MODES[edit.action])  # type: ignore
            later = [replace(s, recall_source=s.recall_source + 1)
                     if s.recall_source is not None and s.recall_source > cur else s for s in scenes[cur + 1:]]
            scenes = scenes[:cur + 1] + [new] + later
        amended = replace(self, scenes=tuple(scenes))
        amended._check_past(self, boundary)
        return amended

    def _check_past(self, before: "LiveTimeline", boundary: int) -> None:
        """Nothing generated before `boundary` may change: the invariant the whole feature rests on."""
        keep = before.scene_of_chunk(boundary - 1) + 1 if boundary > 0 else 0
        for i in range(keep):
            old, new = before.scenes[i], self.scenes[i]
            if (old.prompt, old.mode, old.recall_source, old.recall_name) != \
                    (new.prompt, new.mode, new.recall_source, new.recall_name) or self.start_of(i) != \
                    before.start_of(i) or (i + 1 < keep and old.chunks != new.chunks):
                raise RuntimeError(f"steering changed scene {i + 1}, which started before chunk {boundary}")

    # ------------------------------------------------------------------------------------------ text
    def text(self) -> str:
        """The timeline as text in the language of echo_core.timeline; schedules to exactly these chunks."""
        parts = []
        n = len(self.scenes)
        for i, s in enumerate(self.scenes):
            carrier = i + 1 if self.semantics is MarkerSemantics.OUTGOING else i  # whose marker this tag holds
            marker = self._marker(self.scenes[carrier]) if 0 < carrier < n else ""
            tag = f"[{seconds_text(s.chunks, self.fps, self.temporal_compression, self.frames_per_chunk)}s{marker}]"
            opening = f"{self.opening} " if i == 0 and self.opening else ""
            parts.append(f"{opening}{s.prompt} {tag}")
        text = " | ".join(parts)
        subs = [s.subtitle for s in self.scenes]
        return text + (" ; " + " | ".join(subs) if any(subs) else "")

    def _marker(self, s: LiveScene) -> str:
        if s.mode is TransitionMode.RECALL:
            return "@" + (str(s.recall_source + 1) if s.recall_source is not None else s.recall_name or "")
        if s.mode is TransitionMode.HARDCUT:
            return "#"
        if self.default_mode is not TransitionMode.SMOOTH:
            raise InputError("transition", f"the timeline's default transition is {self.default_mode.value}, and "
                                           "the timeline language has no marker for a smooth transition; choose cut "
                                           "or recall, or set the default transition to smooth")
        return ""

    def schedule(self) -> Timeline:
        """Write the text, parse and schedule it again, and check it gives these very scenes."""
        text = self.text()
        try:
            tl = parse_script(text).schedule(fps=self.fps, frames_per_chunk=self.frames_per_chunk,
                                             temporal_compression=self.temporal_compression,
                                             default_mode=self.default_mode, marker_semantics=self.semantics)
        except TimelineError as e:
            raise InputError(e.field or "timeline", e.detail) from None
        got = [(s.prompt, s.num_chunks) for s in tl.scenes]
        if got != [(s.prompt, s.chunks) for s in self.scenes]:
            raise RuntimeError(f"the steered timeline text {text!r} schedules to {got}, not to the generated scenes")
        modes = [(t.mode, t.recall_source) for t in tl.transitions]
        if modes != [(s.mode, s.recall_source) for s in self.scenes[1:]]:
            raise RuntimeError(f"the steered timeline text {text!r} reads back other transitions: {modes}")
        return tl


def seconds_text(chunks: int, fps: float, temporal_compression: int, frames_per_chunk: int) -> str:
    """The shortest decimal number of seconds that the parser turns into exactly `chunks` chunks."""
    per_chunk = temporal_compression * frames_per_chunk
    exact = chunks * per_chunk / fps
    for digits in range(0, 16):
        for value in (exact, exact + 0.5 * 10.0 ** -digits):  # rounded, or nudged up past a float just below
            text = f"{value:.{digits}f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            v = float(text)
            if v > 0 and max(1, int(v * fps / per_chunk)) == chunks and v * fps < (chunks + 1e-3) * per_chunk:
                return text
    raise ValueError(f"no decimal duration schedules to {chunks} chunks at {fps} fps")  # unreachable in practice


def describe(tl: LiveTimeline) -> dict[str, Any]:
    """For the route's state: each scene's prompt, chunks and first chunk."""
    return {"scenes": [{"prompt": s.prompt, "chunks": s.chunks, "start_chunk": tl.start_of(i)}
                       for i, s in enumerate(tl.scenes)]}
