"""The prompt-timeline language: scenes, durations, transition markers and subtitles.

Restates spec §6.1 (official `parse_scene_segments` / `calculate_latent_frames_from_duration` /
`_seconds_to_blocks`), the "Timeline markers" decision and §11 item 11. Defaults reproduce the official
behaviour, quirks included (floored chunks per scene, last scene absorbs the remainder, outgoing markers).

Grammar (one timeline per text)::

    timeline  := scenes [ ";" subtitles ]
    scenes    := scene ( "|" scene )*          empty parts are dropped
    scene     := prompt text with at most one tag anywhere in it
    tag       := "[" number "s" [ "#" | "@" [ N | NAME ] ] "]"   spaces allowed inside, decimals allowed
    opening   := "[" "@" [ NAME ] "]"          first scene only: the video opens with a recall
    subtitles := text ( "|" text )*            padded with "" / truncated to the scene count

`@N` (1-based scene number) is our extension: recall scene N by hand instead of automatic routing.
`@NAME` (a letter or '_' first, then letters, digits, '_', '.', '-') recalls the saved scene NAME of the scene
library (echo_core.scene_library); the timeline only records the name, a run checks that it is loaded. The
opening tag `[@NAME]` (or `[@]`: route among the saved scenes) on the first scene opens the video with a recall
of a saved scene, as if the video had switched into its first scene by a recall (`Timeline.opening`).
Unlike the official regex, anything in square brackets that is not a valid tag is an error rather than
prompt text: there is no escape syntax, so brackets are reserved for tags.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from echo_core.errors import EchoError

__all__ = [
    "MarkerSemantics",
    "OFFICIAL_TOTAL_LATENT_FRAMES",
    "Opening",
    "Scene",
    "ScriptScene",
    "Timeline",
    "TimelineError",
    "TimelineScript",
    "Transition",
    "TransitionMode",
    "parse_script",
    "parse_timeline",
    "source_spans",
    "subtitle_spans",
]


class TransitionMode(str, Enum):
    SMOOTH = "smooth"
    HARDCUT = "hardcut"
    RECALL = "recall"


class MarkerSemantics(str, Enum):
    OUTGOING = "outgoing"  # official: marker on scene i = transition i -> i+1 (last marker ignored)
    INCOMING = "incoming"  # marker on scene i = how scene i is entered (first marker ignored)


MARKER_MODES = {"#": TransitionMode.HARDCUT, "@": TransitionMode.RECALL}
TAG_FIX = ("write the duration as [10s], [10s#] or [10s@] (or [10s@N] to recall scene N by hand, [10s@name] to "
           "recall the saved scene name)")
SCENE_NAME = r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}"  # a saved scene's name (`@name`); numbers stay scene numbers
OPENING_FIX = ("'[@name]' (no duration) opens the video with a recall of the saved scene name and stands only on the "
               "first scene; to recall a saved scene at a later switch write [10s@name]")
MAX_SECONDS = 86_400.0  # one day; keeps chunk counts and float sums finite
# Official `--num_output_frames` default (latent frames): the length of a timeline not every scene of which has a
# duration (672 latent frames = 2,685 video frames, about 168 s at 16 fps).
OFFICIAL_TOTAL_LATENT_FRAMES = 672
NO_ESCAPE = "square brackets are reserved for duration tags and cannot be escaped; use ( ) in prompt text"


class TimelineError(EchoError):
    """A timeline that cannot be parsed. `field` names the part of the grammar (duration, unit, recall_source, ...),
    `scene_index` is 0-based, `column` a 0-based offset in the text. The message itself names scene and column, so
    it is shown without the field; `relabel("timeline")` gives the "timeline: ..." form a front end shows."""

    def __init__(self, message: str, *, scene_index: int | None = None, column: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(field or "timeline", message)
        self.args = (message,)
        self.scene_index = scene_index
        self.column = column


@dataclass(frozen=True)
class Scene:
    index: int  # 0-based
    prompt: str  # tag removed, whitespace stripped
    seconds: float | None
    marker: str | None  # "#", "@" or None, as written (an ignored marker is still recorded)
    recall_source: int | None  # 1-based scene number from an inline "@N"
    start_chunk: int
    num_chunks: int
    recall_name: str | None = None  # saved scene from an inline "@name"

    @property
    def end_chunk(self) -> int:
        return self.start_chunk + self.num_chunks


@dataclass(frozen=True)
class Transition:
    at_chunk: int  # first chunk of `to_scene`
    from_scene: int
    to_scene: int
    mode: TransitionMode
    recall_source: int | None  # 0-based scene requested by hand; None = automatic routing
    recall_name: str | None = None  # saved scene (scene library) requested by name


@dataclass(frozen=True)
class Timeline:
    scenes: tuple[Scene, ...]
    transitions: tuple[Transition, ...]
    subtitles: tuple[str, ...]
    fps: float
    frames_per_chunk: int
    total_chunks: int
    temporal_compression: int = 4
    # A recall into the first scene (from_scene -1, at chunk 0) of a saved scene: the `[@name]` opening tag.
    opening: Transition | None = None

    def __post_init__(self) -> None:
        # Guards from_dict and hand-built timelines: chunks must tile [0, total_chunks) exactly.
        if not self.scenes:
            raise TimelineError("a timeline needs at least one scene", field="scenes")
        pos = 0
        for i, s in enumerate(self.scenes):
            if s.index != i or s.start_chunk != pos or s.num_chunks < 1:
                raise TimelineError(f"scene {i + 1} does not continue the chunk tiling at chunk {pos}",
                                    scene_index=i, field="scenes")
            pos = s.end_chunk
        if pos != self.total_chunks:
            raise TimelineError(f"scene chunks sum to {pos}, total_chunks is {self.total_chunks}",
                                field="total_chunks")
        expected = [(s.start_chunk, s.index - 1, s.index) for s in self.scenes[1:]]
        if [(t.at_chunk, t.from_scene, t.to_scene) for t in self.transitions] != expected:
            raise TimelineError("transitions must sit at every scene boundary, in order", field="transitions")
        if len(self.subtitles) != len(self.scenes):
            raise TimelineError("one subtitle per scene is required", field="subtitles")
        o = self.opening
        if o is not None and ((o.at_chunk, o.from_scene, o.to_scene) != (0, -1, 0) or o.mode is not
                              TransitionMode.RECALL or o.recall_source is not None):
            raise TimelineError("an opening must be a recall of a saved scene into scene 1 at chunk 0",
                                field="opening")

    def recall_names(self) -> tuple[str, ...]:
        """Saved scenes the timeline recalls by name (`@name`, opening included), in order, each once."""
        names = [t.recall_name for t in ((self.opening,) if self.opening else ()) + self.transitions]
        return tuple(dict.fromkeys(n for n in names if n is not None))

    @property
    def latent_frames(self) -> int:
        return self.total_chunks * self.frames_per_chunk

    @property
    def video_frames(self) -> int:
        # Wan VAE: the first latent frame decodes to 1 frame, every other one to `temporal_compression`.
        return self.temporal_compression * (self.latent_frames - 1) + 1

    @property
    def boundaries(self) -> tuple[int, ...]:
        return tuple(t.at_chunk for t in self.transitions)

    def scene_at_chunk(self, chunk: int) -> Scene:
        if not 0 <= chunk < self.total_chunks:
            raise IndexError(f"chunk {chunk} is outside the timeline (0..{self.total_chunks - 1})")
        return self.scenes[bisect.bisect_right(self.boundaries, chunk)]

    def transition_at_chunk(self, chunk: int) -> Transition | None:
        """The transition that happens right before `chunk` is generated, if `chunk` starts a scene > 0."""
        i = bisect.bisect_left(self.boundaries, chunk)
        if i < len(self.transitions) and self.transitions[i].at_chunk == chunk:
            return self.transitions[i]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "scenes": [{"index": s.index, "prompt": s.prompt, "seconds": s.seconds, "marker": s.marker,
                        "recall_source": s.recall_source, "recall_name": s.recall_name, "start_chunk": s.start_chunk,
                        "num_chunks": s.num_chunks} for s in self.scenes],
            "transitions": [_transition_dict(t) for t in self.transitions],
            "opening": None if self.opening is None else _transition_dict(self.opening),
            "subtitles": list(self.subtitles),
            "fps": self.fps,
            "frames_per_chunk": self.frames_per_chunk,
            "temporal_compression": self.temporal_compression,
            "total_chunks": self.total_chunks,
            # Derived, for viewers (the timeline editor); ignored by from_dict.
            "latent_frames": self.latent_frames,
            "video_frames": self.video_frames,
        }

    @classmethod
    def single(cls, total_chunks: int, prompt: str = "", *, frames_per_chunk: int = 3, fps: float = 16) -> Timeline:
        """One scene of `total_chunks` chunks (benchmarks, single-prompt runs)."""
        scene = Scene(0, prompt, None, None, None, 0, total_chunks)
        return cls((scene,), (), ("",), fps, frames_per_chunk, total_chunks)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Timeline:
        def transition(t: dict[str, Any]) -> Transition:
            return Transition(**{**t, "mode": TransitionMode(t["mode"])})

        try:
            return cls(
                scenes=tuple(Scene(**s) for s in d["scenes"]),
                transitions=tuple(transition(t) for t in d["transitions"]),
                subtitles=tuple(d["subtitles"]),
                fps=d["fps"],
                frames_per_chunk=d["frames_per_chunk"],
                total_chunks=d["total_chunks"],
                temporal_compression=d.get("temporal_compression", 4),
                opening=None if d.get("opening") is None else transition(d["opening"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise TimelineError(f"not a serialised timeline: {e}", field="dict") from e


def _transition_dict(t: Transition) -> dict[str, Any]:
    return {"at_chunk": t.at_chunk, "from_scene": t.from_scene, "to_scene": t.to_scene, "mode": t.mode.value,
            "recall_source": t.recall_source, "recall_name": t.recall_name}


# ----------------------------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class _Part:
    index: int
    column: int  # offset of the stripped part in the original text
    raw: str  # stripped part text


@dataclass(frozen=True)
class _Tag:
    seconds: float
    marker: str | None
    recall_source: int | None
    marker_column: int  # column of the marker (or of '[' when there is none) in the original text
    recall_name: str | None = None  # "@name": a saved scene


@dataclass(frozen=True)
class Opening:
    """The `[@name]` / `[@]` tag of the first scene: the video opens with a recall of a saved scene."""

    name: str | None  # None: routed among the saved scenes
    column: int


_NUM = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)"
_TAG_BODY = re.compile(rf"\s*(?P<num>{_NUM})?\s*(?P<unit>[^\W\d_]+)?\s*(?P<rest>.*?)\s*", re.DOTALL)


def _name(part: _Part) -> str:
    preview = part.raw if len(part.raw) <= 24 else part.raw[:24].rstrip() + " ..."
    return f"scene {part.index + 1} ({preview!r})"


def _fail(part: _Part, column: int, field: str, what: str) -> TimelineError:
    return TimelineError(f"{_name(part)}, column {column}: {what}", scene_index=part.index,
                         column=column, field=field)


def _split_parts(scene_text: str) -> list[_Part]:
    parts, start = [], 0
    for piece in scene_text.split("|"):
        stripped = piece.strip()
        if stripped:
            parts.append(_Part(len(parts), start + piece.index(stripped[0]), stripped))
        start += len(piece) + 1
    return parts


def _parse_tag(part: _Part, body: str, col: int) -> _Tag | Opening:
    """Parse the text between '[' (at column `col`) and ']'."""
    m_open = re.fullmatch(rf"\s*@\s*({SCENE_NAME})?\s*", body)
    if m_open:
        return Opening(m_open[1], col)
    m = _TAG_BODY.fullmatch(body)
    assert m is not None  # every group is optional

    def at(group: str) -> int:  # column of a group inside the tag
        return col + 1 + m.start(group)

    num, unit, rest = m["num"], m["unit"], m["rest"]
    shown = f"'[{body}]'"
    if not body.strip():
        raise _fail(part, col, "duration", f"empty brackets '[]'; {TAG_FIX}")
    if num is None:
        raise _fail(part, col, "duration", f"{shown} is not a duration tag (no number of seconds); "
                    f"{TAG_FIX}; {NO_ESCAPE}")
    seconds = float(num)
    if not 0 < seconds <= MAX_SECONDS:
        raise _fail(part, at("num"), "duration", f"duration {num!r} in {shown} must be a positive number of "
                    f"seconds, at most {MAX_SECONDS:g}; {TAG_FIX}")
    if unit is None:
        found = f", found {rest[0]!r}" if rest else ""
        raise _fail(part, at("rest") if rest else col + len(body) + 1, "unit",
                    f"{shown} has no unit: expected 's' after the number{found}; {TAG_FIX}")
    if unit != "s":
        raise _fail(part, at("unit"), "unit",
                    f"unknown unit {unit!r} in {shown}: only seconds ('s') are supported; {TAG_FIX}")
    if rest in ("", "#", "@"):
        return _Tag(seconds, rest or None, None, at("rest") if rest else col)
    m_recall = re.fullmatch(r"@\s*([0-9]+)", rest)
    if m_recall:
        n = int(m_recall[1])
        if n < 1:
            raise _fail(part, at("rest"), "recall_source", f"{shown}: scenes are numbered from 1; {TAG_FIX}")
        return _Tag(seconds, "@", n, at("rest"))
    m_name = re.fullmatch(rf"@\s*({SCENE_NAME})", rest)
    if m_name:
        return _Tag(seconds, "@", None, at("rest"), m_name[1])
    if re.fullmatch(r"#\s*[0-9]+", rest):
        raise _fail(part, at("rest"), "marker",
                    f"{shown}: a scene number can only follow '@' (recall), not '#'; {TAG_FIX}")
    raise _fail(part, at("rest"), "marker",
                f"unknown marker {rest!r} in {shown}: use '#' for a hard cut, '@' for a recall (then a scene number "
                f"or a saved scene's name: a letter first, then letters, digits, '_', '.', '-') or nothing for the "
                f"default transition; {TAG_FIX}")


def _parse_part(part: _Part) -> tuple[str, _Tag | None, Opening | None]:
    """Split one scene into prompt text, its (at most one) tag and (first scene only) its opening tag; columns
    refer to the original text."""
    text, tag, opening, pieces, i = part.raw, None, None, [], 0
    while True:
        j_open, j_close = text.find("[", i), text.find("]", i)
        if j_close != -1 and (j_open == -1 or j_close < j_open):
            raise _fail(part, part.column + j_close, "tag",
                        f"stray ']' without a matching '['; {TAG_FIX}; {NO_ESCAPE}")
        if j_open == -1:
            pieces.append(text[i:])
            break
        nxt_open = text.find("[", j_open + 1)
        if j_close == -1 or (nxt_open != -1 and nxt_open < j_close):
            raise _fail(part, part.column + j_open, "tag",
                        f"unclosed '[' (a '|', ';' or another '[' comes before ']'); {TAG_FIX}; {NO_ESCAPE}")
        parsed = _parse_tag(part, text[j_open + 1:j_close], part.column + j_open)
        if isinstance(parsed, Opening):
            if part.index != 0 or opening is not None:
                what = "a second opening tag" if opening is not None else "an opening tag on a later scene"
                raise _fail(part, part.column + j_open, "opening", f"{what} ('{text[j_open:j_close + 1]}'); "
                            f"{OPENING_FIX}")
            opening = parsed
        elif tag is not None:
            raise _fail(part, part.column + j_open, "duration",
                        f"more than one duration tag ('{text[j_open:j_close + 1]}'); keep one tag per scene")
        else:
            tag = parsed
        pieces.append(text[i:j_open])
        i = j_close + 1
    # Join the text around a removed tag with a single space ("a [10s] cat" -> "a cat").
    prompt = " ".join(p.strip() for p in pieces if p.strip())
    if not prompt:
        raise _fail(part, part.column, "prompt", "the scene has no prompt text, only a tag; write what the "
                    "scene shows before or after the tag, e.g. 'a cat on a sofa [10s]'")
    return prompt, tag, opening


def _check_positive(name: str, value: Any, integer: bool) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not 0 < value < float("inf"):
        kind = "a positive integer" if integer else "a positive number"
        raise TimelineError(f"{name} must be {kind}, got {value!r}", field=name)


@dataclass(frozen=True)
class ScriptScene:
    """One scene as written: prompt and tag, durations still in seconds (no chunk arithmetic yet)."""

    index: int  # 0-based
    prompt: str
    seconds: float | None
    marker: str | None
    recall_source: int | None  # 1-based, from an inline "@N"
    part: _Part = field(compare=False, repr=False)  # where it sits in the text, for errors
    tag: _Tag | None = field(compare=False, repr=False)
    recall_name: str | None = None  # from an inline "@name"


@dataclass(frozen=True)
class TimelineScript:
    """A timeline text parsed once: scenes in seconds and subtitles. `schedule` turns it into chunks for a model;
    a run parses the text once and schedules it once, for its model's frames per chunk."""

    scenes: tuple[ScriptScene, ...]
    subtitles: tuple[str, ...]  # as written (not yet padded to the scene count)
    opening: Opening | None = None  # `[@name]` on the first scene: the video opens with a recall

    @property
    def prompts(self) -> tuple[str, ...]:
        return tuple(s.prompt for s in self.scenes)

    @property
    def has_recall(self) -> bool:
        return self.opening is not None or any(s.marker == "@" for s in self.scenes)

    def schedule(self, *, fps: float = 16, frames_per_chunk: int = 3, temporal_compression: int = 4,
                 default_mode: TransitionMode | str = TransitionMode.SMOOTH, default_chunks_per_scene: int = 21,
                 marker_semantics: MarkerSemantics | str = MarkerSemantics.OUTGOING,
                 total_latent_frames: int | None = OFFICIAL_TOTAL_LATENT_FRAMES) -> Timeline:
        """Chunk arithmetic (spec §6.1), generalising the official formulas to `fpc = frames_per_chunk` and
        `tc = temporal_compression`:

        * chunks of a scene with duration d: `max(1, int(d*fps / (tc*fpc)))`; without: `default_chunks_per_scene`;
        * if every scene has a duration, latent frames `F = max(fpc, ceil((int(Σd*fps) // tc) / fpc) * fpc)`
          (`total_latent_frames` is ignored, as the official `--num_output_frames` is); otherwise
          `F = total_latent_frames` rounded up to a multiple of fpc (official default 672; None = the sum of the
          scenes' chunks);
        * the last scene gets all chunks the others leave (§11 item 11).
        """
        _check_positive("fps", fps, integer=False)
        for name, value in (("frames_per_chunk", frames_per_chunk), ("temporal_compression", temporal_compression),
                            ("default_chunks_per_scene", default_chunks_per_scene)):
            _check_positive(name, value, integer=True)
        try:
            default_mode = TransitionMode(default_mode)
            marker_semantics = MarkerSemantics(marker_semantics)
        except ValueError as e:
            raise TimelineError(f"{e}; choose one of {[m.value for m in TransitionMode]} for default_mode and "
                                f"{[m.value for m in MarkerSemantics]} for marker_semantics", field="mode") from e
        if total_latent_frames is not None:
            _check_positive("total_latent_frames", total_latent_frames, integer=True)
        n = len(self.scenes)
        outgoing = marker_semantics is MarkerSemantics.OUTGOING
        _check_manual_recalls(self.scenes, outgoing, marker_semantics)

        fpc, tc = frames_per_chunk, temporal_compression
        chunks = [default_chunks_per_scene if s.seconds is None else max(1, int(s.seconds * fps / (tc * fpc)))
                  for s in self.scenes]
        if all(s.seconds is not None for s in self.scenes):
            video = int(sum(s.seconds for s in self.scenes) * fps)  # type: ignore[misc]
            latent = max(fpc, -(-(video // tc) // fpc) * fpc)
        elif total_latent_frames is not None:
            latent = -(-total_latent_frames // fpc) * fpc
        else:
            latent = sum(chunks) * fpc
        total_chunks = latent // fpc
        others = sum(chunks[:-1])
        last = self.scenes[-1].part
        if total_chunks - others < 1:
            raise _fail(last, last.column, "duration",
                        f"the scenes before it need {others} chunks ({others * fpc} latent frames) but the timeline "
                        f"has only {total_chunks} ({latent} latent frames), leaving none for the last scene; "
                        f"lengthen the last scene or raise total_latent_frames")
        chunks[-1] = total_chunks - others

        scenes, start = [], 0
        for s, count in zip(self.scenes, chunks):
            scenes.append(Scene(s.index, s.prompt, s.seconds, s.marker, s.recall_source, start, count, s.recall_name))
            start += count
        transitions = []
        for i in range(n - 1):
            src = scenes[i] if outgoing else scenes[i + 1]
            mode = MARKER_MODES.get(src.marker or "", default_mode)
            manual = None if src.recall_source is None else src.recall_source - 1
            transitions.append(Transition(scenes[i + 1].start_chunk, i, i + 1, mode, manual, src.recall_name))
        subs = (list(self.subtitles) + [""] * n)[:n]
        opening = None if self.opening is None else \
            Transition(0, -1, 0, TransitionMode.RECALL, None, self.opening.name)
        return Timeline(tuple(scenes), tuple(transitions), tuple(subs), fps, fpc, total_chunks, tc, opening)


def _check_manual_recalls(scenes: tuple[ScriptScene, ...], outgoing: bool, semantics: MarkerSemantics) -> None:
    """An inline "@N" must name a scene that is finished before the destination scene starts."""
    n = len(scenes)
    for s in scenes:
        if s.tag is None or (s.recall_source is None and s.recall_name is None):
            continue
        dest = s.index + 1 if outgoing else s.index
        col = s.tag.marker_column
        if dest >= n if outgoing else dest == 0:
            which = "last" if outgoing else "first"
            what = f"@{s.recall_source}" if s.recall_name is None else f"@{s.recall_name}"
            hint = "remove the scene number or move the marker" if s.recall_name is None else \
                "move the marker" + ("" if outgoing else "; to open the video with a saved scene write [@name]")
            raise _fail(s.part, col, "recall_source",
                        f"'{what}' is on the {which} scene, whose marker has no transition "
                        f"({semantics.value} markers); {hint}")
        if s.recall_name is not None:
            continue  # a saved scene: the run checks that it is loaded
        if not 1 <= s.recall_source <= dest:
            raise _fail(s.part, col, "recall_source",
                        f"'@{s.recall_source}' must name an earlier scene than scene {dest + 1} (which it "
                        f"enters), i.e. a number from 1 to {dest}")


def parse_script(text: str) -> TimelineScript:
    """Parse a timeline text (spec §6.1 grammar): scenes, tags and subtitles; errors name scene and column."""
    if not isinstance(text, str):
        raise TimelineError(f"the timeline must be text, got {type(text).__name__}", field="text")
    # Official: `split(';')` - scenes before the first ';', subtitles between the first and the second.
    scene_text, *rest = text.split(";")
    parts = _split_parts(scene_text)
    if not parts:
        raise TimelineError("the timeline has no scenes; write prompts separated by '|', e.g. "
                            "'a cat on a sofa [10s] | the cat jumps down [5s#]'", column=0, field="text")
    scenes, opening = [], None
    for part in parts:
        prompt, tag, opens = _parse_part(part)
        opening = opening or opens
        scenes.append(ScriptScene(part.index, prompt, None if tag is None else tag.seconds,
                                  None if tag is None else tag.marker, None if tag is None else tag.recall_source,
                                  part, tag, None if tag is None else tag.recall_name))
    subs = tuple(s.strip() for s in rest[0].split("|")) if rest else ()
    return TimelineScript(tuple(scenes), subs, opening)


def parse_timeline(text: str, *, fps: float = 16, frames_per_chunk: int = 3, temporal_compression: int = 4,
                   default_mode: TransitionMode | str = TransitionMode.SMOOTH, default_chunks_per_scene: int = 21,
                   marker_semantics: MarkerSemantics | str = MarkerSemantics.OUTGOING,
                   total_latent_frames: int | None = OFFICIAL_TOTAL_LATENT_FRAMES) -> Timeline:
    """Parse and schedule a timeline in one go (`parse_script(text).schedule(...)`; see there)."""
    return parse_script(text).schedule(
        fps=fps, frames_per_chunk=frames_per_chunk, temporal_compression=temporal_compression,
        default_mode=default_mode, default_chunks_per_scene=default_chunks_per_scene,
        marker_semantics=marker_semantics, total_latent_frames=total_latent_frames)


# ----------------------------------------------------------------------------------------------- source ranges

Span = tuple[int, int]  # [start, end) character offsets in the timeline text


def source_spans(script: TimelineScript) -> list[dict[str, Span | None]]:
    """Where each scene's pieces stand in the text, so an editor can splice one piece and leave every other
    character as written: `span` (the scene without surrounding spaces), `prompt` (first to last prompt
    character; a tag in the middle of the prompt lies inside it), `tag` ("[10s@2]"), `seconds` ("10"), `marker`
    (what follows the unit: "", "#", "@", "@2", "@name"; an empty span marks where a marker goes) and `opening`
    ("[@name]"). The script has already been parsed, so the brackets are known to be well formed."""
    out: list[dict[str, Span | None]] = []
    for scene in script.scenes:
        part, raw = scene.part, scene.part.raw
        base = part.column
        tag = seconds = marker = opening = None
        outside: list[int] = []  # offsets of prompt characters (not in a tag, not blank)
        i = 0
        while i < len(raw):
            if raw[i] != "[":
                if not raw[i].isspace():
                    outside.append(i)
                i += 1
                continue
            close = raw.index("]", i)
            body = raw[i + 1:close]
            if re.fullmatch(rf"\s*@\s*({SCENE_NAME})?\s*", body):
                opening = (base + i, base + close + 1)
            else:
                m = _TAG_BODY.fullmatch(body)
                assert m is not None
                inner = base + i + 1
                tag = (base + i, base + close + 1)
                seconds = (inner + m.start("num"), inner + m.end("num"))
                marker = (inner + m.start("rest"), inner + m.end("rest"))
            i = close + 1
        prompt = (base + outside[0], base + outside[-1] + 1) if outside else None
        out.append({"span": (base, base + len(raw)), "prompt": prompt, "tag": tag, "seconds": seconds,
                    "marker": marker, "opening": opening})
    return out


def subtitle_spans(text: str) -> list[Span]:
    """Where each subtitle (the `|` parts between the first and the second ';') stands in the text, without its
    surrounding spaces; an empty subtitle is an empty span at its place. Empty list: the text has no subtitles."""
    first = text.find(";")
    if first == -1:
        return []
    end = text.find(";", first + 1)
    spans, start = [], first + 1
    for piece in text[first + 1:len(text) if end == -1 else end].split("|"):
        lead = len(piece) - len(piece.lstrip())
        spans.append((start + lead, start + lead + len(piece.strip())))
        start += len(piece) + 1
    return spans
