"""Prompt Timeline and Recall Scene: the scene timeline, its per-scene text embeddings and recall routing.

Owns: the timeline text and fps, which text encoder embeds the scenes (ComfyUI's CLIP - umT5 via Load CLIP
type wan - or an echo text encoder), and how recall segments find their scene.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from comfy_api.latest import io

from echo_core.config import EchoConfig
from echo_core.errors import EchoError
from echo_core.preflight import check_recalls
from echo_core.session import TimelineSpec, encode_timeline, recall_routing
from echo_core.text_standin import standin_embedding

from . import checks, types
from ._host import NodeInputError, encode_prompts

# Written in the bundled demo model's small grammar (so a graph built from the menu runs with it as it is) and
# plain English for umT5: a hard cut into a second scene, then a recall of the first.
EXAMPLE = ("a red circle bouncing on a blue striped background [4s#] | a yellow square moving left on a green "
           "checkered background [3s@] | a red circle bouncing on a blue striped background [4s]")
TRANSITIONS = ["smooth", "hardcut", "recall"]


class PromptTimeline(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoPromptTimeline",
            display_name="Prompt Timeline",
            category=types.CATEGORY,
            description="Scenes separated by '|', each with a duration tag: [10s] smooth, [10s#] hard cut into the "
                        "next scene, [10s@] recall an earlier scene next ([10s@2]: recall scene 2).",
            inputs=[
                io.MultiType.Input("clip", [io.Clip, types.TextEncoder],
                                   tooltip="Text encoder: Load CLIP with type wan (umT5), or an echo text encoder."),
                io.String.Input("timeline", multiline=True, default=EXAMPLE,
                                tooltip="scene[10s] | scene[8s#] | scene[10s@] ; optional subtitles after ';'"),
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0,
                               tooltip="Frames per second of the decoded video (Wan2.1: 16)."),
                io.Combo.Input("default_transition", options=TRANSITIONS, default="smooth",
                               tooltip="Transition used at a scene boundary whose tag has no marker.", optional=True),
            ],
            outputs=[types.Timeline.Output(display_name="timeline",
                                           tooltip="The parsed scenes with one text embedding each: into Recall "
                                                   "Scene or straight into the Echo-Forcing Sampler.")],
            hidden=[io.Hidden.unique_id],  # the sampler names this node when it sends the steered text back
        )

    @classmethod
    def validate_inputs(cls, timeline: str | None = None) -> bool | str:
        if timeline is None:  # linked from another node: checked at execution
            return True
        try:
            TimelineSpec(checks.timeline_text(timeline)).parse()
        except EchoError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, clip, timeline: str, fps: float, default_transition: str = "smooth") -> io.NodeOutput:
        checks.timeline_text(timeline)
        checks.number("fps", fps, 1.0, 120.0)
        try:
            spec = encode_timeline(timeline, fps, default_transition, lambda prompts: encode_prompts(clip, prompts),
                                   lambda prompts: encode_prompts(clip, prompts, strict=False))
        except EchoError as e:
            raise NodeInputError(e.field, e.detail) from None
        node_id = getattr(getattr(cls, "hidden", None), "unique_id", None)
        spec = replace(spec, node_id=None if node_id is None else str(node_id))
        parsed = spec.parse()
        summary = [f"{s.index + 1}. {s.prompt} [{s.num_chunks} chunks]" for s in parsed.scenes]
        return io.NodeOutput(spec, ui={"text": ["\n".join(summary)]})


class RecallScene(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoRecallScene",
            display_name="Recall Scene",
            category=types.CATEGORY,
            description="Sets how recall segments ('@' markers) find the earlier scene they bring back: automatic "
                        "routing over the finished scenes, or one scene by number. An inline '@N' always wins.",
            inputs=[
                types.Timeline.Input("timeline", tooltip="Prompt Timeline output."),
                io.Combo.Input("source", options=["auto", "scene number"], default="auto",
                               tooltip="auto: routing picks the earlier scene each '@' brings back. scene number: "
                                       "always the scene given below."),
                io.Combo.Input("routing", options=["similarity", "idf"], default="similarity",
                               tooltip="auto: similarity of the prompts' text embeddings (official) or TF-IDF."),
                io.Int.Input("scene", default=1, min=1, max=999, tooltip="1-based scene to recall (source: scene "
                                                                         "number)."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="auto: below this similarity nothing is recalled (0 = off, official)."),
            ],
            outputs=[types.Timeline.Output(display_name="timeline",
                                           tooltip="The same timeline with these recall settings, for the sampler. "
                                                   "A timeline without '@' passes through unchanged.")],
        )

    @classmethod
    def validate_inputs(cls, source: str = "auto", routing: str = "similarity", threshold: float = 0.0) -> bool | str:
        return checks.validation_message(checks.recall_inputs, source, routing, threshold)

    @classmethod
    def execute(cls, timeline: TimelineSpec, source: str, routing: str, scene: int,
                threshold: float) -> io.NodeOutput:
        if not isinstance(timeline, TimelineSpec):
            raise NodeInputError("timeline", f"expected a Prompt Timeline output, got {type(timeline).__name__}")
        checks.recall_inputs(source, routing, threshold)
        try:
            parsed = timeline.parse()
            cfg = recall_routing(routing, scene if source == "scene number" else None, threshold, len(parsed.scenes))
            check_recalls(parsed, EchoConfig(routing=cfg))  # a scene not yet finished: refused now, not mid-run
        except EchoError as e:
            raise NodeInputError(e.field, e.detail) from None
        recalls = sum(1 for t in parsed.transitions if t.mode.value == "recall")
        shown = {"source": source, "routing": routing, "scene": scene if source == "scene number" else None,
                 "recall_transitions": recalls}
        if recalls == 0:  # nothing to route: the settings wait for an '@' in the timeline
            shown["note"] = "the timeline has no recall ('@'): nothing to route"
        return io.NodeOutput(timeline.with_routing(cfg), ui={"text": [json.dumps(shown)]})


@dataclass(frozen=True)
class StandinTextEncoder:
    """Deterministic per-word pseudo-random embeddings (no download): for tests and random-weight smoke runs."""

    dim: int
    length: int

    def encode_prompts(self, prompts, strict: bool = True):
        return [standin_embedding(p, self.dim, self.length) for p in prompts]


class EchoStandinTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EchoStandinTextEncoder",
            display_name="Stand-in Text Encoder (testing)",
            category=types.CATEGORY + "/testing",
            description="Hash-based word embeddings in place of umT5, for random-weight models and tests. Real "
                        "models need their own text encoder (Load CLIP, type wan).",
            inputs=[io.Int.Input("dim", default=4096, min=8, max=8192,
                                 tooltip="Embedding width: the model's text_dim (Wan2.1: 4096)."),
                    io.Int.Input("length", default=512, min=1, max=4096,
                                 tooltip="Tokens per prompt (Wan2.1: 512).")],
            outputs=[types.TextEncoder.Output(display_name="text_encoder",
                                              tooltip="For Prompt Timeline's clip input.")],
        )

    @classmethod
    def execute(cls, dim: int, length: int) -> io.NodeOutput:
        return io.NodeOutput(StandinTextEncoder(dim, length))
