"""The Echo-Forcing node set (ComfyUI V3 API). Imported only inside a ComfyUI host."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import timeline_route  # noqa: F401  (registers GET/POST /echo_forcing/timeline for the editor)
from .loader import LoadARVideoModel
from .memory import DecaySettings, SceneMemoryCache
from .sampler import EchoForcingSampler
from .scenes import LoadSceneMemory, SaveSceneMemory
from .timeline import EchoStandinTextEncoder, PromptTimeline, RecallScene
from .toy import EchoToyDecode, EchoToyTextEncoder

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
]


class EchoForcingExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
