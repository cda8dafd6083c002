"""The hot path: the context is rotated once per chunk and reused by the chunk's other calls, with the same numbers
as rotating everything on every call."""

from __future__ import annotations

import pytest
import torch

import echo_core.model.wan as wan
from echo_core.cache.base import CachePolicy
from echo_core.model.attention_io import AttentionInputs
from echo_core.run import RunInputs, start_run
from echo_core.sampler import SamplerConfig
from echo_core.text_standin import standin_embedding
from echo_core.timeline import parse_timeline

# smooth (decay weights live for 5 chunks), hard cut, recall; long enough for the window to roll and compress
TL = "a red fox runs [3s] | the red fox jumps [2s#] | a blue bird sings [2s@] | the red fox runs again [2s]"


def _run(model, policy: str) -> torch.Tensor:
    timeline = parse_timeline(TL)
    contexts = tuple(standin_embedding(s.prompt, model.cfg.text_dim, 16) for s in timeline.scenes)
    inputs = RunInputs(timeline, contexts, (16, 4, 4), seed=2, sampler=SamplerConfig(denoising_steps=(1000.0, 500.0)),
                       routing_features=lambda ts: [standin_embedding(t, model.cfg.text_dim, 16)[0] for t in ts])
    return start_run(model, policy, inputs).collect()[0]


@pytest.mark.parametrize("policy", ["echo", "rolling", "flush"])
def test_reused_context_gives_the_same_video_as_rotating_every_call(model, policy, monkeypatch):
    reused = _run(model, policy)

    def no_memo(self, layer, q_positions, span, own_rows):
        return AttentionInputs(q_positions, [span])

    monkeypatch.setattr(CachePolicy, "reusable", no_memo)
    assert torch.equal(reused, _run(model, policy))


def test_only_the_chunks_own_rows_are_rotated_after_the_first_call(model, monkeypatch):
    rotated: list[int] = []
    real = wan.apply_rope

    def counting(x, cos, sin):
        rotated.append(x.shape[-2])
        return real(x, cos, sin)

    monkeypatch.setattr(wan, "apply_rope", counting)
    _run(model, "echo")
    layers = model.cfg.num_layers
    # per layer and call: the queries (one chunk), then either the whole context or the chunk's own rows
    per_call = [rotated[i + 1] for i in range(0, len(rotated), 2)]
    queries = [rotated[i] for i in range(0, len(rotated), 2)]
    own = 3 * 2 * 2  # a chunk: 3 frames of 2x2 tokens
    assert set(queries) == {own}
    calls = len(per_call) // layers
    assert calls == parse_timeline(TL).total_chunks * 3  # 2 denoising calls + the commit pass per chunk
    first_calls = [per_call[c * layers] for c in range(0, calls, 3)]
    later_calls = [n for c in range(calls) if c % 3 for n in per_call[c * layers:(c + 1) * layers]]
    assert set(later_calls) == {own}  # only the rows the call wrote
    assert max(first_calls) > own  # the context itself is rotated once per chunk


def test_hot_path_bench_runs_and_reports_every_policy():
    """The bench keeps working (its timing claims are measured by running it, not here)."""
    import sys
    from pathlib import Path

    sys.path.append(str(Path(__file__).resolve().parents[1] / "bench"))
    import hot_path

    result = hot_path.main(["--height", "32", "--width", "32", "--chunks", "2", "--steps", "1", "--json"])
    assert {"floor_s", "rolling_s", "echo_s"} <= set(result) and result["echo_fp8_s"] is None
    assert all(len(t) == 2 and min(t) > 0 for t in result["per_chunk_s"].values())
    assert result["settings"]["tokens_per_frame"] == 4 and result["settings"]["calls_per_chunk"] == 2
