"""Custom socket types of the Echo-Forcing nodes. Their values are immutable objects (frozen dataclasses)."""

from __future__ import annotations

from comfy_api.latest import io

ARVideoModel = io.Custom("ECHO_AR_MODEL")  # nodes._host.ARModel
Timeline = io.Custom("ECHO_TIMELINE")  # echo_core.session.TimelineSpec
Memory = io.Custom("ECHO_MEMORY")  # echo_core.session.MemorySpec
Decay = io.Custom("ECHO_DECAY")  # echo_core.session.DecaySpec
TextEncoder = io.Custom("ECHO_TEXT_ENCODER")  # anything with encode_prompts(prompts) -> [1, L, D] tensors

CATEGORY = "Echo-Forcing"
