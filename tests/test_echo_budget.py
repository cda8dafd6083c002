"""Memory budget of EchoCache over a long interactive run (spec §8): 600 chunks, 21 scenes, 20 switches of all
three kinds (plus an image-latent prefill chunk), tiny geometry. At every call of every chunk no layer is handed
more than the 21-frame window, the per-chunk report says so, the held bytes stay under a fixed bound and the
scene pool stays within its size."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from echo_core.cache.base import ChunkInfo
from echo_core.cache.echo.policy import EchoCache
from echo_core.config import DecayConfig, EchoConfig, RecallFrameConfig
from echo_core.routing import RecallRouter
from echo_core.timeline import Transition
from echo_core.timeline import TransitionMode as TM
from echo_stand_in import StandIn

GRID = (4, 4)
S, LAYERS, H, D = 16, 2, 2, 32
WINDOW = 21
POOL = 8
# 21 scenes, 600 chunks in all; short scenes switch again before the old memory was evicted
SCENE_CHUNKS = [40, 1, 2, 35, 60, 3, 25, 9, 50, 4, 30, 7, 45, 20, 1, 38, 55, 6, 70, 29, 70]
MODES = [TM.SMOOTH, TM.HARDCUT, TM.RECALL] * 7
WORDS = ["forest", "city", "beach", "kitchen", "desert", "harbour", "library"]
PROMPTS = [f"a quiet {WORDS[i % 7]} scene number {i} with a {WORDS[(i * 3) % 7]}" for i in range(21)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _chunks() -> list[ChunkInfo]:
    """A 1-frame prefill (start image latent), then 3-frame chunks; scene 0 absorbs the prefill."""
    out = [ChunkInfo(index=0, start_frame=0, num_frames=1, grid=GRID, prefill=True)]
    frame, index = 1, 1
    for si, n in enumerate(SCENE_CHUNKS):
        start = 0 if si == 0 else frame
        for j in range(n):
            tr = Transition(index, si - 1, si, MODES[si - 1], None) if j == 0 and si > 0 else None
            out.append(ChunkInfo(index=index, start_frame=frame, num_frames=3, grid=GRID, scene_index=si,
                                 scene_start_frame=start, transition=tr, is_scene_end=j == n - 1))
            frame += 3
            index += 1
    return out


def _stress() -> EchoConfig:
    """Old memory larger than a chunk that outlives the refill, so rolling meets it before eviction."""
    base = EchoConfig(recall_frames=RecallFrameConfig(pool_max_size=POOL))
    return replace(base,
                   smooth=replace(base.smooth, old_recent_frames=5, decay=replace(base.smooth.decay,
                                                                                  clear_after_blocks=12)),
                   hardcut=replace(base.hardcut, use_old_recent=True, old_recent_frames=2,
                                   old_memory_source="select", decay=DecayConfig(clear_after_blocks=3)),
                   recall=replace(base.recall, decay=replace(base.recall.decay, clear_after_blocks=9)))


CONFIGS = {
    "official": (EchoConfig(recall_frames=RecallFrameConfig(pool_max_size=POOL)), None),
    "stress": (_stress(), 0.6),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_budget_holds_for_600_chunks(name):
    cfg, threshold = CONFIGS[name]
    router = RecallRouter(PROMPTS, method="idf", threshold=threshold)
    policy = EchoCache(LAYERS, cfg, router=router)
    driver = StandIn(policy, layers=LAYERS, heads=H, head_dim=D, grid=GRID, pool=8)
    chunks = _chunks()
    assert len(chunks) == 601 and sum(c.transition is not None for c in chunks) == 20
    # everything the policy may hold per layer, in frames of K and V: window, history ring, anchor source
    # (period 12 + largest old memory), 3 recall candidates, first frame; plus float32 weights/rates/counts.
    source = min(WINDOW, 12 + max(1 + cfg.mode(m).old_recent_frames * cfg.mode(m).use_old_recent
                                  for m in ("smooth", "hardcut", "recall")))
    frames = WINDOW + WINDOW + source + 3 + 1
    bound = LAYERS * (2 * frames * S * H * D * 2 + 3 * WINDOW * S * 4 + 3 * H * D * 4)
    entry_bytes = 2 * LAYERS * 2 * S * H * D * 2  # recall frame + first frame, K and V, per scene
    modes_seen, recalled, evictions = set(), 0, 0
    for chunk in chunks:
        rec = driver.run_chunk(chunk)
        rep = rec.report
        json.dumps(rep)  # the CLI prints it
        assert rec.max_tokens <= WINDOW * S, chunk.index
        assert rep["budget_tokens"] == WINDOW * S and rep["cache_tokens"] <= WINDOW * S
        assert sum(rep["tokens"].values()) == rep["cache_tokens"] == rep["cache_frames"] * S
        assert rep["cache_bytes"] == policy.nbytes() <= bound, chunk.index
        assert rep["pool_size"] <= POOL and rep["pool_bytes"] <= POOL * entry_bytes
        if "transition" in rep:
            modes_seen.add(rep["transition"]["mode"])
            recalled += rep["transition"]["routing"] is not None
        evictions += bool(rep.get("evicted_frames"))
    assert modes_seen == {"smooth", "hardcut", "recall"} and recalled == MODES[:20].count(TM.RECALL) == 6
    assert len(policy.pool) == POOL
    assert evictions > 0
    assert driver.max_tokens_seen == WINDOW * S  # the window does fill up
    policy.release()
    assert policy.nbytes() == 0 and policy.token_count() == 0
