"""The Echo-Forcing node set (ComfyUI V3 API). Imported only inside a ComfyUI host."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import budget, timeline_route  # noqa: F401  (register the front end's routes: /echo_forcing/...)
from .loader import LoadARVideoModel
from .memory import DecaySettings, SceneMemoryCache
from .sampler import EchoForcingSampler
from .scenes import LoadSceneMemory, SaveSceneMemory
from .timeline import EchoStandinTextEncoder, PromptTimeline, RecallScene
from .toy import EchoToyDecode, EchoToyEncode, EchoToyTextEncoder

NODE_CLASSES: list[type[io.ComfyNode]] = [
    LoadARVideoModel,
    SceneMemoryCache,
    DecaySettings,
    PromptTimeline,
    RecallScene,
    EchoForcingSampler,
    EchoStandinTextEncoder,
    EchoToyTextEncoder,
    EchoToyDecode,
    SaveSceneMemory, LoadSceneMemory,  # the scene library (nodes/scenes.py)
    EchoToyEncode,
]


class EchoForcingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
