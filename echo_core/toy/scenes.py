"""The scene library on the toy model: runs whose finished scenes can be saved, and runs that recall saved scenes
(the demo's --save-scenes / --scene-library, the memory benchmark's saved-scene row, tests).

Like `echo_core.toy.run.start_toy_run`, but routing gets the toy text encoder as a function, so a saved scene's
prompt is filtered and encoded together with the timeline's (routing as if it were a scene of this video; the
features of a run without saved scenes are the same as start_toy_run's).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

from echo_core.run import PolicyLike, start_run
from echo_core.sampler import SamplerConfig
from echo_core.scene_library import SavedScene
from echo_core.session import MemorySpec, plan_run
from echo_core.toy.codec import PATCH
from echo_core.toy.loader import ToyBundle
from echo_core.toy.run import ToyRun, timeline_spec


def start_toy_scene_run(bundle: ToyBundle, text: str, *, saved: Sequence[SavedScene] = (),
                        policy: PolicyLike | MemorySpec = "echo", seed: int = 0,
                        sampler: SamplerConfig | None = None, noise: Any = None,
                        default_mode: str = "smooth") -> ToyRun:
    """Open a toy run of `text` with saved scenes pre-loaded (`saved`); `run.run.saved_scenes()` exports its own
    scenes once it has ended."""
    spec = timeline_spec(bundle, text, default_mode)
    plan = plan_run(spec, bundle.model.cfg, bundle.frames_per_chunk, bundle.height, bundle.width,
                    spatial_compression=PATCH)
    if isinstance(policy, str) and policy in ("echo", "rolling", "full"):
        policy = MemorySpec(policy=policy)
    if isinstance(policy, MemorySpec):
        policy = policy.policy_for(bundle.frames_per_chunk, spec.routing)
    encoder = bundle.text_encoder
    inputs = replace(plan.inputs(spec, seed=seed, sampler=sampler or bundle.sampler_config),
                     routing_features=lambda prompts: encoder.encode_prompts(prompts, strict=False),
                     saved_scenes=tuple(saved))
    return ToyRun(bundle, plan, start_run(bundle.model, policy, inputs, noise=noise))
