"""Echo-Forcing mechanisms on tiny hand-computed examples (spec §2.5, §2.6, §3.3, §4.2, §4.3, §5.3) and the
configuration contract (official defaults, JSON round trip, errors naming the field)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from echo_core.cache.echo import compression as comp
from echo_core.cache.echo.decay import diff_rates, key_difference, rates_from_difference
from echo_core.cache.echo.memory import anchor_insert_frames, temporal_positions
from echo_core.cache.echo.policy import EchoCache
from echo_core.cache.echo.recall import ScenePool, fuse_recall_frame
from echo_core.config import (
    ConfigError,
    DecayConfig,
    EchoConfig,
    HierarchicalMemoryConfig,
    RecallFrameConfig,
    RoutingConfig,
)
from echo_core.timeline import TransitionMode as TM
from echo_stand_in import StandIn, pingpong, timeline_chunks

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------ phase score
# head_dim 6 = 3 complex pairs: Wan's split gives 1 temporal pair (ω = 10000^0 = 1) and 2 spatial pairs (ω = 0).
Q_BAR = torch.tensor([[1.0, 0.0, 0.0, 1.0, 2.0, 0.0]])  # q̄ = (1, i, 2)
A_BAR = torch.tensor([[1.5, 1.0, 3.0]])  # E|q̃| per pair; minus |q̄| = (1, 1, 2) gives the spread (0.5, 0, 1)
KEY = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 1.0])  # k̃ = (i, 1, 1+i), |k̃| = (1, 1, √2)


def _scores(fusion: str, gate, amp: bool = True) -> float:
    omega = comp.temporal_frequencies(6)
    assert omega.tolist() == [1.0, 0.0, 0.0]
    keys = KEY.view(1, 1, 1, 1, 6)
    out = comp.phase_scores(keys, torch.tensor([2.0]), Q_BAR, A_BAR, offsets=(1, 2), omega=omega, gate=gate,
                            amplitude_compensation=amp, fusion=fusion)
    return out.item()


def test_phase_score_by_hand():
    # pair 0: Re(1 · conj(i) · e^{iθ}) = sin θ with θ = 1·(Δ + o) = 3, 4; pair 1: Re(i · 1) = 0;
    # pair 2: Re(2 · (1 - i)) = 2; amplitude bonus: 0.5·1 + 0·1 + 1·√2.
    bonus = 0.5 + math.sqrt(2)
    assert _scores("mean", None) == pytest.approx((math.sin(3) + math.sin(4)) / 2 + 2 + bonus, abs=1e-5)
    assert _scores("max", None) == pytest.approx(max(math.sin(3), math.sin(4)) + 2 + bonus, abs=1e-5)
    gate = torch.tensor(math.exp(-3.0))
    assert _scores("mean", gate) == pytest.approx((math.sin(3) + math.sin(4)) / 2 + 2 + gate.item() * bonus,
                                                  abs=1e-5)
    assert _scores("mean", None, amp=False) == pytest.approx((math.sin(3) + math.sin(4)) / 2 + 2, abs=1e-5)


def test_drift_gate():
    same = Q_BAR.view(1, 1, 1, 6).repeat(1, 1, 5, 1)
    assert comp.drift_gate(Q_BAR, same, 3.0).item() == pytest.approx(1.0)
    orthogonal = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 6)
    assert comp.drift_gate(Q_BAR, orthogonal, 3.0).item() == pytest.approx(math.exp(-3.0), rel=1e-5)
    opposite = -Q_BAR.view(1, 1, 1, 6)
    assert comp.drift_gate(Q_BAR, opposite, 3.0).item() == pytest.approx(math.exp(-6.0), rel=1e-5)


def test_query_calibration_sums():
    q = torch.tensor([[3.0, 4.0], [0.0, -2.0]]).view(1, 1, 2, 2)  # q̃ = 3+4i, -2i
    qs, qa = comp.query_sums(q)
    assert qs.tolist() == [[3.0, 2.0]] and qa.tolist() == [[7.0]]  # Σ q̃ = 3+2i, Σ|q̃| = 5 + 2


def test_token_selection_excludes_and_orders():
    scores = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    excluded = torch.tensor([False, False, False, True, False])  # e.g. a recent-frame token
    counts = torch.tensor([0, 0, 8, 0, 0])  # token 2 already chosen topc_max_reuse times
    order = torch.tensor([4, 3, 2, 1, 0])  # history order runs backwards here
    assert comp.select_tokens(scores, excluded, counts, order, 2, 8).tolist() == [4, 0]


def test_ping_pong_matches_official_rule():
    # spec §2.5 restated: RS = pc - 9, r = RS mod 12, odd -> frames [12-r-3, 12-r) reversed, else [r, r+3)
    for pc in range(21, 200, 3):
        rs = pc - 9
        r, odd = rs % 12, (rs // 12) % 2
        official = list(range(12 - r - 3, 12 - r))[::-1] if odd else list(range(r, r + 3))
        assert anchor_insert_frames(pc, 3, 21, 12) == official, pc
    assert anchor_insert_frames(21, 3, 21, 12) == [11, 10, 9]
    assert anchor_insert_frames(22, 3, 21, 12) == [pingpong(13), pingpong(14), pingpong(15)]  # unaligned clock


# ------------------------------------------------------------------------------------------------ recall frames
def _candidates():
    """3 candidate frames (tags 0, 4, 8) x 2 locations, 1 head, 2 dims; q̄ = (1, 0) so σ = K[..., 0]."""
    sigma = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(3.0)]])  # [location, frame]
    keys = torch.zeros(1, 1, 3, 2, 2)
    keys[0, 0, :, :, 0] = sigma.T
    keys[0, 0, :, :, 1] = torch.tensor([1.0, 2.0, 3.0])[:, None]
    values = torch.zeros(1, 1, 3, 2, 2)
    values[0, 0, :, :, 0] = torch.tensor([0.0, 4.0, 8.0])[:, None]
    values[0, 0, :, :, 1] = torch.tensor([0.0, 1.0])[None, :]  # location tag
    return keys, values, torch.tensor([[1.0, 0.0]])


def test_score_weighted_recall_frame():
    keys, values, q_bar = _candidates()
    k, v = fuse_recall_frame(keys, values, q_bar, mode="score_weighted", base_weight=0.9)
    # location 0: softmax(0,0,0) = 1/3 each -> 0.9·0 + 0.1·(0+4+8)/3 = 0.4
    # location 1: softmax(0,0,ln3) = (0.2, 0.2, 0.6) -> 0.1·(0.8 + 4.8) = 0.56
    assert v[0, 0, :, 0].tolist() == pytest.approx([0.4, 0.56], abs=1e-6)
    assert v[0, 0, :, 1].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)  # location p stays p
    # keys blended with the same weights: dim 1 carries the frame's 1, 2, 3
    assert k[0, 0, :, 1].tolist() == pytest.approx([0.9 + 0.1 * 2.0, 0.9 + 0.1 * (0.2 + 0.4 + 1.8)], abs=1e-6)


def test_token_select_recall_frame():
    keys, values, q_bar = _candidates()
    _, v = fuse_recall_frame(keys, values, q_bar, mode="token_select", base_weight=0.9)
    assert v[0, 0, :, 0].tolist() == [0.0, 8.0]  # ties -> first frame; location 1 -> frame with σ = ln 3
    _, v1 = fuse_recall_frame(keys[:, :, 1:2], values[:, :, 1:2], q_bar, mode="score_weighted", base_weight=0.9)
    assert v1[0, 0, :, 0].tolist() == [4.0, 4.0]  # a single candidate is copied as is
    assert RecallFrameConfig().sampled_frames() == [0, 4, 8]
    assert RecallFrameConfig().sampled_frames(available=6) == [0, 4]


def test_pool_keeps_newest_64():
    pool = ScenePool(max_size=64)
    for scene in range(65):
        pool.add(scene, "compress", [(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))])
    assert len(pool) == 64
    assert [e.scene_index for e in pool.entries] == list(range(1, 65))
    assert pool.newest("compress").scene_index == 64 and pool.get(0, "compress") is None


def test_policy_pool_bound_over_65_scenes():
    grid = (2, 2)
    policy = EchoCache(1, EchoConfig())
    driver = StandIn(policy, layers=1, heads=2, head_dim=32, grid=grid)
    for chunk in timeline_chunks([1] * 65, [TM.HARDCUT] * 64, grid):
        report = driver.run_chunk(chunk).report
        assert report["pool_size"] <= 64
    assert report["pool_size"] == 64
    assert [e.scene_index for e in policy.pool.entries] == list(range(1, 65))


# ------------------------------------------------------------------------------------------------ decay
def test_diff_decay_rate_mapping():
    rates = rates_from_difference(torch.tensor([0.1, 0.3, 0.5]), 0.80, 0.95)
    assert rates.tolist() == pytest.approx([0.95, 0.875, 0.80])
    assert rates_from_difference(torch.tensor([0.4, 0.4]), 0.55, 0.90).tolist() == pytest.approx([0.90, 0.90])
    ref = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]).view(1, 1, 3, 2)
    cur = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]).view(1, 1, 3, 2)  # same, orthogonal, opposite
    assert key_difference(cur, ref).tolist() == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)
    assert diff_rates(cur, ref, 0.55, 0.90).tolist() == pytest.approx([0.90, 0.725, 0.55])


# ------------------------------------------------------------------------------------------------ positions
def test_rope_positions_and_jump():
    assert temporal_positions(4, 21, "local", 45, 3) == [0, 46, 47, 48]  # hard cut: [recall frame | chunk]
    assert temporal_positions(6, 21, "local", 0, 3) == [0, 1, 2, 3, 4, 5]
    assert temporal_positions(4, 21, "local", 2, 3) == [0, 3, 4, 5]  # recall jump 2
    assert temporal_positions(2, 21, "local", 5, 3) == [5, 6]  # fewer frames than the jump span
    assert temporal_positions(6, 21, "tail", 0, 3) == [15, 16, 17, 18, 19, 20]


def test_tail_mode_places_keys_at_the_window_end():
    grid = (2, 2)
    cfg = EchoConfig(memory=HierarchicalMemoryConfig(rope_position_mode="tail"))
    driver = StandIn(EchoCache(1, cfg), layers=1, heads=2, head_dim=32, grid=grid)
    rec = [driver.run_chunk(c) for c in timeline_chunks([2], [], grid)]
    assert rec[0].commit[0].k_pos[::4, 0].tolist() == [18, 19, 20]
    assert rec[1].commit[0].k_pos[::4, 0].tolist() == [15, 16, 17, 18, 19, 20]
    assert rec[1].commit[0].q_pos[::4, 0].tolist() == [18, 19, 20]


@pytest.mark.parametrize("keep", [False, True])
def test_compressed_tokens_spatial_positions(keep):
    grid = (2, 3)
    cfg = EchoConfig(memory=HierarchicalMemoryConfig(compressed_keep_origin_positions=keep))
    driver = StandIn(EchoCache(1, cfg), layers=1, heads=2, head_dim=32, grid=grid)
    view = [driver.run_chunk(c) for c in timeline_chunks([9], [], grid)][-1].commit[0]
    region = slice(12 * 6, 15 * 6)
    yx = view.k_pos[region, 1] * 3 + view.k_pos[region, 2]
    origin = view.spatial[region].long()
    slot_index = torch.arange(18) % 6
    assert not torch.equal(origin, slot_index)  # tokens were picked from mixed locations
    assert torch.equal(yx, origin if keep else slot_index)
    rest = view.k_pos[:12 * 6, 1] * 3 + view.k_pos[:12 * 6, 2]
    assert torch.equal(rest, torch.arange(72) % 6)


# ------------------------------------------------------------------------------------------------ config
def test_official_defaults():
    cfg = EchoConfig()
    m = cfg.memory
    assert (m.window_frames, m.anchor_frames, m.compressed_frames, m.recent_frames, m.frames_per_chunk) == \
        (21, 12, 3, 3, 3)
    assert (m.rolling_cycle, m.anchor_period, m.offsets, m.topc_max_reuse, m.drift_gate_lambda, m.fusion) == \
        (4, 12, (1, 2, 4, 8, 16), 8, 3.0, "mean")
    assert not m.compressed_keep_origin_positions
    rf = cfg.recall_frames
    assert (rf.mode, rf.storage_frames, rf.source_frames, rf.stride, rf.base_frame_weight, rf.pool_max_size) == \
        ("score_weighted", 12, 12, 4, 0.9, 64)
    s, h, r = cfg.smooth, cfg.hardcut, cfg.recall
    assert (s.old_recent_frames, s.decay.min_rate, s.decay.max_rate, s.decay.clear_after_blocks,
            s.rope_jump.value) == (2, 0.80, 0.95, 5, 0)
    assert (h.decay.strategy, h.decay.fixed_rate, h.decay.first_block_weight, h.decay.clear_after_blocks,
            h.rope_jump.value, h.use_old_recent) == ("fixed", 1.0, 0.8, 1, 45, False)
    assert (r.decay.min_rate, r.decay.max_rate, r.decay.first_block_weight, r.decay.clear_after_blocks,
            r.rope_jump.strategy, r.rope_jump.min_value, r.rope_jump.max_value, r.use_old_recent) == \
        (0.55, 0.90, 1.0, 5, "similarity", 0, 6, False)
    assert all(cfg.mode(x).old_memory_source == "compress" and cfg.mode(x).use_scene_local_timing
               for x in ("smooth", "hardcut", "recall"))
    assert (cfg.routing.method, cfg.routing.threshold) == ("similarity", None)


def test_config_json_round_trip():
    cfg = EchoConfig(memory=HierarchicalMemoryConfig(fusion="max", offsets=(1, 3)),
                     recall=EchoConfig().recall, routing=RoutingConfig(manual_recall_scene_ids=(0, 0, 1)))
    text = cfg.to_json()
    assert EchoConfig.from_json(text) == cfg
    data = json.loads(text)
    assert data["memory"]["offsets"] == [1, 3] and data["hardcut"]["rope_jump"]["value"] == 45
    assert EchoConfig.from_dict({}) == EchoConfig()
    # a partial mode keeps that mode's own defaults
    part = EchoConfig.from_dict({"hardcut": {"decay": {"clear_after_blocks": 2}}})
    assert part.hardcut.decay.clear_after_blocks == 2 and part.hardcut.decay.first_block_weight == 0.8
    assert part.hardcut.rope_jump.value == 45
    assert DecayConfig.from_json(DecayConfig(min_rate=0.5).to_json()) == DecayConfig(min_rate=0.5)


@pytest.mark.parametrize("data, field", [
    ({"memory": {"windw_frames": 21}}, "memory.windw_frames"),
    ({"colour": 1}, "colour"),
    ({"smooth": {"decay": {"speed": 1}}}, "smooth.decay.speed"),
    ({"memory": {"recent_frames": 4}}, "memory.window_frames"),
    ({"smooth": {"decay": {"min_rate": 0.99}}}, "smooth.decay.min_rate"),
    ({"recall": {"old_memory_source": "resink"}}, "recall.old_memory_source"),
    ({"hardcut": {"rope_jump": {"strategy": "similarity"}}}, "hardcut.rope_jump.strategy"),
    ({"recall_frames": {"mode": "blend"}}, "recall_frames.mode"),
    ({"routing": {"method": "magic"}}, "routing.method"),
    ({"memory": {"rolling_cycle": 8}}, "memory.rolling_cycle"),
])
def test_config_errors_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        EchoConfig.from_dict(data)
    assert err.value.field == field
    assert field in str(err.value)


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="must equal window_frames"):
        HierarchicalMemoryConfig(recent_frames=2)
    assert HierarchicalMemoryConfig(fusion="sum").fusion == "mean"  # official spelling
    assert RecallFrameConfig(mode="stitch").mode == "token_select"
    assert RoutingConfig(method="Similar").method == "similarity"
    assert RoutingConfig(manual_recall_scene_ids=(0, 0, 0, 1)).manual_source(3) == 0
    assert RoutingConfig(manual_recall_scene_ids=(0, 0, 0, 1)).manual_source(2) is None
    fw = HierarchicalMemoryConfig.for_frames_per_chunk(1)
    assert (fw.window_frames, fw.recent_frames, fw.rolling_cycle) == (21, 5, 12)
    with pytest.raises(ValueError, match="frames_per_chunk"):
        EchoCache(1, EchoConfig()).begin_chunk(timeline_chunks([1], [], (2, 2), frames_per_chunk=4)[0])


def test_mechanisms_switch_off_to_a_sliding_window():
    grid = (2, 2)
    mem = HierarchicalMemoryConfig(anchor_frames=0, compressed_frames=0, recent_frames=18)
    off = EchoConfig(memory=mem)
    off = EchoConfig.from_dict({**off.to_dict(), **{m: {"use_old_memory": False, "use_old_recent": False}
                                                    for m in ("smooth", "hardcut", "recall")}})
    policy = EchoCache(1, off)
    driver = StandIn(policy, layers=1, heads=2, head_dim=32, grid=grid)
    records = [driver.run_chunk(c) for c in timeline_chunks([12, 3], [TM.HARDCUT], grid)]
    for b in range(7, 12):
        assert records[b].commit[0].frame[::4].tolist() == list(range(3 * b - 18, 3 * b + 3))
        assert records[b].commit[0].weights is None
    # a cut without memory starts the new scene from nothing (the +45 jump moves keys and queries alike)
    cut = records[12].commit[0]
    assert cut.frame[::4].tolist() == [36, 37, 38] and cut.q_pos[::4, 0].tolist() == [45, 46, 47]
    assert cut.k_pos[::4, 0].tolist() == [45, 46, 47]
    assert records[13].commit[0].q_pos[::4, 0].tolist() == [3, 4, 5]
    assert records[12].report["transition"]["memory"] == "none"
    # nothing but the window K/V (fp16), its float32 weights and rates, and the scene's first frame
    assert policy.nbytes() == 2 * 21 * 4 * 2 * 32 * 2 + 2 * 21 * 4 * 4 + 2 * 4 * 2 * 32 * 2
