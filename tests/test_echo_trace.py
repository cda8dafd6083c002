"""Slot-by-slot trace of EchoCache at the real Wan2.1-1.3B geometry (30x52 tokens per frame, 12 heads x 128).

A stand-in drives the policy through the sampler's call sequence; values carry each token's absolute frame,
in-frame index and call step, so every assertion reads what the model would actually attend to. Expected
layouts are the official traces of spec §2.4/§2.5, §6.3 and Appendix B, written out by hand (or from the
palindrome rule of §2.5, implemented separately in the stand-in).

Timeline (chunks of 3 latent frames): scene 0: chunks 0-12 | hard cut | scene 1: 13-25 | smooth | scene 2: 26-35
| smooth | scene 3: 36-37 | recall (router stub -> scene 0, jump 2) | scene 4: 38-43.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from echo_core.cache.echo.policy import EchoCache
from echo_core.config import EchoConfig, HierarchicalMemoryConfig
from echo_core.timeline import TransitionMode as TM
from echo_stand_in import StandIn, pingpong, timeline_chunks

GRID = (30, 52)
S = 30 * 52
H, D = 12, 128


pytestmark = pytest.mark.usefixtures("one_thread")


@dataclass
class _Decision:
    scene_index: int
    score: float
    rope_jump: int
    reason: str


class StubRouter:
    def __init__(self):
        self.calls = []

    def route(self, dest_scene, pool_scene_indices, manual=None):
        self.calls.append((dest_scene, list(pool_scene_indices), manual))
        return _Decision(scene_index=0, score=0.5, rope_jump=2, reason="stub")


@pytest.fixture(scope="module")
def trace():
    router = StubRouter()
    policy = EchoCache(1, EchoConfig(), router=router)
    driver = StandIn(policy, layers=1, heads=H, head_dim=D, grid=GRID, pool=8)
    chunks = timeline_chunks([13, 13, 10, 2, 6], [TM.HARDCUT, TM.SMOOTH, TM.SMOOTH, TM.RECALL], GRID)
    records = [driver.run_chunk(c) for c in chunks]
    return records, router, driver


def slots(view, s=S):
    return [round(f, 3) for f in view.frame[::s].tolist()]


def slot_times(view, s=S):
    return view.k_pos[::s, 0].tolist()


def q_times(view, s=S):
    return view.q_pos[::s, 0].tolist()


def expected_recall_tag(driver: StandIn, scene_frames: range, first: int) -> torch.Tensor:
    """§4.2 by hand: q̄ over the scene's commit passes, σ_f = mean_h K_f·q̄ for frames first+0/4/8, then
    0.9·tag(first) + 0.1·Σ softmax(σ)_f tag(f), per token."""
    q_sum = torch.zeros(H, D)
    for f in scene_frames:
        q_sum += driver.q_pool[0, (3 * f + 1) % driver.pool, 0].float().sum(dim=1)
    q_bar = q_sum / (len(scene_frames) * S)
    cands = [first, first + 4, first + 8]
    sigma = torch.stack([(driver.frame_keys(0, f)[0].float() * q_bar[:, None, :]).sum(-1).mean(0) for f in cands])
    alpha = torch.softmax(sigma, dim=0)  # [3, S]
    tags = torch.tensor(cands, dtype=torch.float32)[:, None]
    return 0.9 * first + 0.1 * (alpha * tags).sum(0)


def test_filling_phase(trace):
    records, _, _ = trace
    for b in range(7):
        view = records[b].commit[0]
        assert slots(view) == list(range(3 * b + 3)), b
        assert slot_times(view) == list(range(3 * b + 3))
        assert q_times(view) == [3 * b, 3 * b + 1, 3 * b + 2]
        assert view.weights is None
        # spatial RoPE coordinates of every key are its in-frame index
        yx = view.k_pos[:, 1] * GRID[1] + view.k_pos[:, 2]
        assert torch.equal(yx, torch.arange(view.k_pos.shape[0]) % S)


def test_steady_state_layout_matches_spec(trace):
    records, _, _ = trace
    spec_anchors = {9: [9, 10, 11, 11, 10, 9, 8, 7, 6, 5, 4, 3], 10: [11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
                    11: [8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 1, 2], 7: [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9]}
    for b in range(7, 13):
        view = records[b].commit[0]
        got = slots(view)
        assert len(got) == 21
        anchors = [pingpong(3 * b - 18 + j) for j in range(12)]
        assert got[:12] == anchors, b
        if b in spec_anchors:
            assert got[:12] == spec_anchors[b]
        assert got[15:18] == [3 * b - 3, 3 * b - 2, 3 * b - 1]
        assert got[18:] == [3 * b, 3 * b + 1, 3 * b + 2]
        assert slot_times(view) == list(range(21))
        assert q_times(view) == [18, 19, 20]
        # compressed history: token-level picks from the candidate frames 3b-21 .. 3b-4, in history order
        comp_frames = view.frame[12 * S:15 * S]
        comp_spatial = view.spatial[12 * S:15 * S]
        assert comp_frames.min() >= 3 * b - 21 and comp_frames.max() <= 3 * b - 4, b
        assert len(set(comp_frames.tolist())) >= 3  # many frames, not whole frames copied
        key = comp_frames * S + comp_spatial
        assert torch.all(key[1:] > key[:-1])  # sorted by (frame, location), no duplicates
        # all cached K/V are the clean commit-pass ones; the chunk's own slots carry the current call
        assert torch.all(view.step == 4)
        first = records[b].first[0]
        assert torch.all(first.step[:18 * S] == 4) and torch.all(first.step[18 * S:] == 0)
        rep = records[b].report
        assert rep["tokens"]["anchor"] == 12 * S and rep["tokens"]["compressed"] == 3 * S
        assert rep["tokens"]["recent"] == 3 * S and rep["tokens"]["current"] == 3 * S
        assert rep["cache_tokens"] == 21 * S
        assert rep["anchor_source_frames"] == anchors  # scene 0: scene-local == absolute
        assert rep["rope_t"]["anchor"] == list(range(12)) and rep["rope_t"]["current"] == [18, 19, 20]
        assert set(rep["compressed_source_frames"]) == set(comp_frames.long().tolist())
    # block 9 example from spec §2.4: recent [24,25,26], current [27,28,29]
    assert slots(records[9].commit[0])[15:] == [24, 25, 26, 27, 28, 29]


def test_compressed_region_is_refreshed_each_chunk(trace):
    records, _, _ = trace
    a = records[8].commit[0].frame[12 * S:15 * S]
    b = records[9].commit[0].frame[12 * S:15 * S]
    assert not torch.equal(a, b)
    assert b.max() > a.max()  # the candidate range moved on by one chunk


def test_hard_cut_layout_positions_and_weight(trace):
    records, _, driver = trace
    view = records[13].first[0]
    got = slots(view)
    assert len(got) == 4 and got[1:] == [39, 40, 41]
    mem = view.frame[:S]
    expected = expected_recall_tag(driver, range(0, 39), first=0)
    assert torch.allclose(mem, expected, atol=2e-3)
    assert mem.min() >= 0 and mem.max() <= 0.8 + 1e-3 and mem.max() > 0
    assert torch.equal(view.spatial[:S], torch.arange(S).float())  # location p stays location p
    assert slot_times(view) == [0, 46, 47, 48]
    assert q_times(view) == [46, 47, 48]
    assert view.weights is not None
    assert torch.allclose(view.weights[:S], torch.full((S,), 0.8))
    assert torch.all(view.weights[S:] == 1)
    rep = records[13].report
    assert rep["transition"]["mode"] == "hardcut" and rep["transition"]["rope_jump"] == 45
    assert rep["transition"]["memory"] == "recall frame of scene 0"
    assert rep["tokens"]["old_memory"] == S and rep["evicted_frames"] == 1
    # evicted after one chunk: the next chunk sees only scene 1, at scene-local positions
    nxt = records[14].commit[0]
    assert slots(nxt) == [39, 40, 41, 42, 43, 44]
    assert q_times(nxt) == [3, 4, 5] and slot_times(nxt) == list(range(6))
    assert nxt.weights is None


def test_rolling_restarts_in_later_scene(trace):
    records, _, _ = trace
    view = records[20].commit[0]
    assert slots(view)[:12] == [42, 43, 44, 45, 46, 47, 48, 49, 50, 50, 49, 48]
    assert records[20].report["anchor_source_frames"] == [3, 4, 5, 6, 7, 8, 9, 10, 11, 11, 10, 9]
    assert q_times(view) == [18, 19, 20]


def test_smooth_switch_decay_and_eviction(trace):
    records, _, driver = trace
    view = records[26].first[0]
    got = slots(view)
    assert len(got) == 6 and got[1:] == [76, 77, 78, 79, 80]
    mem = view.frame[:S]
    assert torch.allclose(mem, expected_recall_tag(driver, range(39, 78), first=39), atol=2e-2)
    assert q_times(view) == [3, 4, 5] and slot_times(view) == list(range(6))
    assert records[26].report["transition"]["memory"] == "recall frame of scene 1"
    w0 = view.weights
    assert w0 is None or torch.all(w0 == 1)
    # weights 1 -> r -> r^2 -> r^3 -> r^4 on the three memory frames, one rate per location
    r = records[27].first[0].weights[:3 * S]
    assert torch.allclose(r[:S], r[S:2 * S]) and torch.allclose(r[:S], r[2 * S:])
    assert abs(r.min().item() - 0.80) < 1e-5 and abs(r.max().item() - 0.95) < 1e-5  # min-max normalised
    for k, b in enumerate(range(27, 31), start=1):
        w = records[b].first[0].weights
        assert torch.allclose(w[:3 * S], r ** k, rtol=1e-4), b
        assert torch.all(w[3 * S:] == 1)
    assert records[30].report["evicted_frames"] == 3
    after = records[31].commit[0]
    assert slots(after) == list(range(78, 96)) and q_times(after) == [15, 16, 17]
    assert after.weights is None
    # the scene rolls later with its own first frames as anchors (old memory no longer in the anchor source)
    assert slots(records[33].commit[0])[:12] == [81, 82, 83, 84, 85, 86, 87, 88, 89, 89, 88, 87]


def test_second_smooth_switch_reuses_chain_anchor(trace):
    records, _, _ = trace
    first_mem = records[26].first[0].frame[:S]
    view = records[36].first[0]
    assert torch.equal(view.frame[:S], first_mem)  # scene 1's recall frame again, not scene 2's
    assert slots(view)[1:] == [106, 107, 108, 109, 110]
    assert records[36].report["transition"]["memory"] == "recall frame of scene 1"


def test_recall_switch(trace):
    records, router, _ = trace
    assert router.calls == [(4, [0, 1, 2, 3], None)]
    view = records[38].first[0]
    assert slots(view)[1:] == [114, 115, 116]
    assert torch.equal(view.frame[:S], records[13].first[0].frame[:S])  # scene 0's recall frame
    assert slot_times(view) == [0, 3, 4, 5] and q_times(view) == [3, 4, 5]
    routing = records[38].report["transition"]["routing"]
    assert routing["scene"] == 0 and routing["rope_jump"] == 2 and routing["reason"] == "stub"
    r = records[39].first[0].weights[:S]
    assert abs(r.min().item() - 0.55) < 1e-5 and abs(r.max().item() - 0.90) < 1e-5
    for k, b in enumerate(range(39, 43), start=1):
        assert torch.allclose(records[b].first[0].weights[:S], r ** k, rtol=1e-4)
    assert records[42].report["evicted_frames"] == 1
    assert slots(records[43].commit[0]) == list(range(114, 132)) and q_times(records[43].commit[0]) == [15, 16, 17]


def test_budget_never_exceeded(trace):
    records, _, driver = trace
    assert driver.max_tokens_seen <= 21 * S
    assert all(r.report["cache_tokens"] <= r.report["budget_tokens"] == 21 * S for r in records)


def test_two_layers_share_layout_but_select_their_own_tokens():
    policy = EchoCache(2, EchoConfig())
    driver = StandIn(policy, layers=2, heads=H, head_dim=D, grid=GRID, dtype=torch.bfloat16, seed=3, pool=5)
    records = [driver.run_chunk(c) for c in timeline_chunks([9], [], GRID)]
    last = records[-1].commit
    assert slots(last[0])[:12] == slots(last[1])[:12] == [pingpong(3 * 8 - 18 + j) for j in range(12)]
    assert slots(last[0])[15:] == slots(last[1])[15:] == [21, 22, 23, 24, 25, 26]
    assert not torch.equal(last[0].frame[12 * S:15 * S] * S + last[0].spatial[12 * S:15 * S],
                           last[1].frame[12 * S:15 * S] * S + last[1].spatial[12 * S:15 * S])


def test_frame_wise_chunks_keep_the_ping_pong_anchor():
    cfg = EchoConfig(memory=HierarchicalMemoryConfig.for_frames_per_chunk(1))
    assert (cfg.memory.recent_frames, cfg.memory.anchor_period) == (5, 12)
    policy = EchoCache(1, cfg)
    grid = (2, 3)
    driver = StandIn(policy, layers=1, heads=2, head_dim=32, grid=grid)
    records = [driver.run_chunk(c) for c in timeline_chunks([60], [], grid, frames_per_chunk=1)]
    for i, rec in enumerate(records):
        got = slots(rec.commit[0], s=6)
        if i < 21:
            assert got == list(range(i + 1))
            continue
        assert got[:12] == [pingpong(i - 20 + j) for j in range(12)], i
        assert got[15:] == [i - 5, i - 4, i - 3, i - 2, i - 1, i]
        assert q_times(rec.commit[0], s=6) == [20]
