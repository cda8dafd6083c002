"""FlushCache: which frames survive a scene switch, where they sit in RoPE time, and the memory bound.

The cache is driven without a model: every frame's keys and values carry its absolute frame index, so the
spans returned by `attend` tell exactly which frames a chunk attends to.
"""

from __future__ import annotations

import pytest
import torch

from echo_core.cache.base import CallInfo, ChunkInfo
from echo_core.cache.flush import FlushCache
from echo_core.cache.rolling import RollingCache
from echo_core.run import PolicyContext, make_policy
from echo_core.timeline import Timeline, Transition, TransitionMode

GRID = (2, 3)  # 6 tokens per frame
S = GRID[0] * GRID[1]
LAYERS = 2


def _kv(frames: range) -> torch.Tensor:
    """[1, 2, len*S, 4] whose every entry is the frame index (as float)."""
    t = torch.tensor(list(frames), dtype=torch.float32).repeat_interleave(S)
    return t.view(1, 1, -1, 1).expand(1, 2, -1, 4).contiguous()


def _run_chunk(cache, index: int, scene: int, mode: str | None, fpc: int = 3, scene_start: int = 0):
    start = index * fpc
    transition = None if mode is None else Transition(index, scene - 1, scene, TransitionMode(mode), None)
    cache.begin_chunk(ChunkInfo(index=index, start_frame=start, num_frames=fpc, grid=GRID, scene_index=scene,
                                scene_start_frame=scene_start, transition=transition))
    out = []
    for step, commit in ((0, False), (1, True)):
        cache.begin_call(CallInfo(step, commit))
        kv = _kv(range(start, start + fpc))
        out = [cache.attend(layer, kv, kv, kv) for layer in range(LAYERS)]
    report = cache.end_chunk()
    return out, report


def _frames_and_times(inputs) -> tuple[list[int], dict[int, int], list[int]]:
    """Frames attended to (sorted), the RoPE time of each, and the queries' times."""
    span = inputs.spans[0]
    frames = span.k[0, 0, ::S, 0].round().long().tolist()
    times = span.positions[::S, 0].tolist()
    assert torch.equal(span.k, span.v)
    return sorted(frames), dict(zip(frames, times)), sorted(set(inputs.q_positions[:, 0].tolist()))


def _timeline(cache, scene_chunks: list[int], modes: list[str]):
    """Run scenes of the given chunk counts; yield (chunk index, scene, attention inputs of layer 1, report)."""
    index = 0
    for scene, n in enumerate(scene_chunks):
        for j in range(n):
            mode = modes[scene - 1] if scene > 0 and j == 0 else None
            out, report = _run_chunk(cache, index, scene, mode, scene_start=3 * (index - j))
            yield index, scene, out[1], report
            index += 1


def test_switch_keeps_sink_and_last_frames_only():
    cache = FlushCache(LAYERS, window_frames=21, sink_frames=3, keep_last_frames=2)
    seen = {i: (frames, times, q, rep) for i, _, inp, rep in _timeline(cache, [10, 4], ["hardcut"])
            for frames, times, q in [_frames_and_times(inp)]}
    # chunk 9 (last of scene 0): sink 0-2 plus the newest 18 frames 12..29
    frames, _, _, _ = seen[9]
    assert frames == [0, 1, 2] + list(range(12, 30))
    # chunk 10 opens scene 1: sink 0-2, the last two frames 28, 29, and the chunk's own frames 30-32
    frames, times, q, report = seen[10]
    assert frames == [0, 1, 2, 28, 29, 30, 31, 32]
    assert report["flushed_frames"] == list(range(12, 28))
    # relative positions: adjacent in time order, queries at the chunk's own slots
    assert [times[f] for f in frames] == list(range(8))
    assert q == [5, 6, 7]
    # the next chunk continues from there without another flush
    frames, times, q, report = seen[11]
    assert frames == [0, 1, 2, 28, 29, 30, 31, 32, 33, 34, 35] and report["flushed_frames"] == []
    assert q == [8, 9, 10]


def test_absolute_positions_and_no_switch_equal_the_rolling_cache():
    flush = FlushCache(LAYERS, window_frames=21, sink_frames=3, keep_last_frames=2, positions="absolute")
    rolling = RollingCache(LAYERS, window_frames=21, sink_frames=3)
    for index in range(15):
        a, _ = _run_chunk(flush, index, 0, None)
        b, _ = _run_chunk(rolling, index, 0, None)
        fa, ta, qa = _frames_and_times(a[0])
        fb, tb, qb = _frames_and_times(b[0])
        assert (fa, ta, qa) == (fb, tb, qb)
        assert all(ta[f] == f for f in fa)  # absolute: RoPE time is the frame index


def test_absolute_positions_after_a_flush_keep_frame_indices():
    cache = FlushCache(LAYERS, window_frames=21, sink_frames=3, keep_last_frames=1, positions="absolute")
    last = None
    for index, _, inp, _ in _timeline(cache, [8, 2], ["recall"]):
        last = (index, _frames_and_times(inp))
        if index == 8:
            frames, times, q = last[1]
            assert frames == [0, 1, 2, 23, 24, 25, 26]
            assert all(times[f] == f for f in frames) and q == [24, 25, 26]


def test_flush_modes_limit_which_switches_flush():
    cache = FlushCache(LAYERS, window_frames=21, sink_frames=3, keep_last_frames=2, flush_modes=("hardcut",))
    runs = list(_timeline(cache, [8, 3, 3], ["smooth", "hardcut"]))
    smooth_open = _frames_and_times(runs[8][2])[0]
    cut_open = _frames_and_times(runs[11][2])[0]
    assert runs[8][3]["flushed_frames"] == [] and len(smooth_open) == 21
    assert cut_open == [0, 1, 2, 31, 32, 33, 34, 35]


def test_budget_is_bounded_over_a_long_multi_scene_run():
    cache = make_policy("flush", PolicyContext(LAYERS, Timeline.single(1), 3))
    assert isinstance(cache, FlushCache)
    sizes, tokens = set(), []
    scenes = [7, 5, 9, 3, 11, 6] * 8  # 48 switches, 328 chunks
    modes = (["smooth", "hardcut", "recall"] * 20)[:len(scenes) - 1]
    for index, _, inp, report in _timeline(cache, scenes, modes):
        frames, times, q = _frames_and_times(inp)
        assert len(frames) <= 21 and max(times.values()) <= 20 and max(q) <= 20
        assert report["cache_tokens"] <= 21 * S and cache.token_count(1) == len(frames) * S
        tokens.append(report["cache_tokens"])
        sizes.add(report["cache_bytes"])
    # buffers are allocated once at full window size and never grow
    assert sizes == {2 * LAYERS * 2 * 21 * S * 4 * 4}
    assert max(tokens) == 21 * S and min(tokens[1:]) == 6 * S
    cache.release()
    assert cache.nbytes() == 0


@pytest.mark.parametrize("kwargs, field", [
    (dict(window_frames=5, sink_frames=3, keep_last_frames=2), "keep_last_frames"),
    (dict(sink_frames=-1), "sink_frames"),
    (dict(positions="tail"), "positions"),
    (dict(flush_modes=("cut",)), "flush_modes"),
])
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        FlushCache(LAYERS, **kwargs)


def test_chunk_that_cannot_fit_after_a_flush_is_rejected():
    cache = FlushCache(LAYERS, window_frames=8, sink_frames=3, keep_last_frames=2)
    with pytest.raises(ValueError, match="window_frames"):
        cache.begin_chunk(ChunkInfo(index=0, start_frame=0, num_frames=4, grid=GRID))
