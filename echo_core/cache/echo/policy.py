"""EchoCache: the Echo-Forcing KV-cache policy, composing memory layout, compression, recall, decay, switches.

Call sequence (driven by the sampler): begin_chunk -> per forward: begin_call + attend for every layer ->
end_chunk. Planning happens once per chunk in Python (layouts are identical across layers); tensor work
happens per layer. Per layer the policy keeps only what it reads:

    window K/V [B, H, W*S, D]                 the attention window (model dtype)
    history ring K/V [B, H, W*S, D]           compression candidates (only if compressed_frames > 0)
    anchor source K/V [B, H, P*S, D]          the scene's first P clock frames (only if anchor_frames > 0)
    recall candidates (3 frames), first frame, weights/rates [W*S] float32, calibration sums

versus the official window + k_original + v_original + k_raw + history + 12 candidate frames. The scene pool
lives on `pool_device` (default CPU, like the official code, so pooled scenes cost host RAM, not GPU memory,
and a switch pays one host->device copy of one frame per layer) in the model dtype (official: float32).
The hot path (attend) has no host synchronisation; `end_chunk` syncs a few scalars for its report.

Where this differs from the official code (spec references; defaults otherwise reproduce it):
* Eviction (§5.4) drops the old-memory frames at the window head; if rolling already pushed them into the anchor
  region (only when clear_after_blocks outlasts the refill) they are left to roll out. Official: drops the
  fixed head span, which would then delete anchors.
* Queries sit at the RoPE time of the chunk's own slots (§3.2); identical to the official rule in all regular
  cases, consistent also with use_scene_local_timing=False after a switch (official: inconsistent).
* Ping-pong anchors (§2.5) use the palindrome index, equal to the official r/odd rule for chunk-aligned clocks
  and defined for unaligned ones; the RoPE jump moves the chunk's own frames (official transition_frames = 3).
* Recall candidates keep only the sampled frames (0, 4, 8), fused in float32, pooled in the model dtype; with
  batch > 1 scores are averaged over the batch (official: sample 0) and recall frames are per sample.
* A switch whose memory is missing (empty pool) inserts none and says so in the report (official raises); a
  scene end not flagged by the sampler is finished at the next switch. Without a router, recall takes the
  manual or newest pool scene with jump = rope_jump.value.
* A chunk shorter than frames_per_chunk (e.g. a 1-frame start-image prefill) is accepted while the window fills.
"""

from __future__ import annotations

from typing import Any

import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, ChunkInfo, KVSpan
from echo_core.cache.echo.compression import HistoryRing, origin_positions
from echo_core.cache.echo.decay import DecayState
from echo_core.cache.echo.layer_state import LayerState, allocate_layer, apply_moves, drop_head_frames, reset_for_scene
from echo_core.cache.echo.memory import (
    ANCHOR,
    COMPRESSED,
    OLD_MEMORY,
    SlotInfo,
    plan_chunk,
    region_times,
    region_tokens,
    slot_label,
    slot_positions,
    temporal_positions,
)
from echo_core.cache.echo.recall import ScenePool, SceneRecorder
from echo_core.cache.echo.transitions import mode_name, plan_switch
from echo_core.config import EchoConfig


class EchoCache(CachePolicy):
    def __init__(self, num_layers: int, config: EchoConfig | None = None, router: Any = None,
                 pool_device: torch.device | str = "cpu"):
        super().__init__(num_layers)
        if config is not None and not isinstance(config, EchoConfig):
            raise TypeError(f"config must be an EchoConfig, got {type(config).__name__}")
        self.config = config or EchoConfig()
        self.mem = self.config.memory
        self.router = router
        self.pool = ScenePool(self.config.recall_frames.pool_max_size, pool_device)
        self.scenes = SceneRecorder(num_layers, self.config, self.pool)
        self._layers: list[LayerState | None] = [None] * num_layers
        self._grid: tuple[int, int] | None = None
        self.slots: list[SlotInfo] = []
        self.ring = HistoryRing(num_layers, self.mem)
        self._source_cap = self._source_capacity()
        self._source_meta: list[SlotInfo | None] = [None] * self._source_cap
        self._offset = 0  # old-memory frames at the window head (scene timing offset, §3.2)
        self._local_timing = False  # official: False until the first switch
        self._rope_mode = self.mem.rope_position_mode
        self._pending_jump = 0
        self.decay = DecayState(num_layers)
        self._rolled_in_scene = False
        self._switch_report: dict[str, Any] | None = None
        self._chunk_state: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------ planning
    def begin_chunk(self, chunk: ChunkInfo) -> None:
        c = chunk.num_frames
        if not 1 <= c <= self.mem.frames_per_chunk:
            raise ValueError(f"chunk {chunk.index} has {c} frames; EchoCache takes 1..frames_per_chunk "
                             f"({self.mem.frames_per_chunk}) frames per chunk (memory.frames_per_chunk)")
        if self._grid is None:
            self._grid = tuple(chunk.grid)  # type: ignore[assignment]
            self.scenes.scene = chunk.scene_index
        elif tuple(chunk.grid) != self._grid:
            raise ValueError(f"chunk grid changed from {self._grid} to {tuple(chunk.grid)} within one run; "
                             "use a new EchoCache per resolution")
        self._switch_report = None
        if chunk.scene_index != self.scenes.scene or (chunk.transition is not None and chunk.index > 0):
            self._switch(chunk)
        super().begin_chunk(chunk)
        local = chunk.start_frame - chunk.scene_start_frame
        pc_start = local + self._offset if self._local_timing else chunk.start_frame
        frames = list(range(chunk.start_frame, chunk.end_frame))
        plan = plan_chunk(self.slots, self.mem, frames=frames, scene_frames=[local + j for j in range(c)],
                          pc_start=pc_start, source=self._source_meta)
        for st in self._live_layers():
            apply_moves(st, plan.moves, chunk.tokens_per_frame)
        self.decay.apply_moves(plan.moves, chunk.tokens_per_frame)
        self.slots = plan.slots
        self._rolled_in_scene |= plan.rolled
        s = chunk.tokens_per_frame
        pending = set(range(self.num_layers)) if plan.compress and self.ring.ready else set()
        a, m = self.mem.anchor_frames, self.mem.compressed_frames
        if pending:
            self.slots[a:a + m] = [SlotInfo(COMPRESSED)] * m
        if plan.compress:
            self.ring.seed_origins(self.slots[a:a + m], s)
        jump, self._pending_jump = self._pending_jump, 0
        times = temporal_positions(len(self.slots), self.mem.window_frames, self._rope_mode, jump, c)
        self._chunk_state = dict(
            plan=plan, s=s, pc_start=pc_start, local=local, jump=jump, times=times, compress=pending,
            first_of_scene=local == 0, positions={}, origin_positions={}, committed=False,
            ring=self.ring.plan(pc_start, c),
            mirror=[(j, pc_start + j) for j in range(c) if 0 <= pc_start + j < self._source_cap])

    def _source_capacity(self) -> int:
        """Anchor-source frames kept. Like the official `k_original` it is indexed by the clock (old memory
        first) and shifted when the old memory is evicted, so it must also hold the frames that slide into
        [0, P) at that moment: P plus the largest old memory a switch can insert."""
        if self.mem.anchor_frames == 0:
            return 0
        extra = 0
        for name in ("smooth", "hardcut", "recall"):
            tc = self.config.mode(name)
            extra = max(extra, int(tc.use_old_memory) + (tc.old_recent_frames if tc.use_old_recent else 0))
        return min(self.mem.window_frames, self.mem.anchor_period + extra)

    def _live_layers(self) -> list[LayerState]:
        return [st for st in self._layers if st is not None]

    # ------------------------------------------------------------------------------------------ switching
    def _switch(self, chunk: ChunkInfo) -> None:
        """Rebuild the window for the scene `chunk` opens (§6.3)."""
        if not self.scenes.finished:
            self.scenes.finish()  # the sampler did not flag the previous chunk as the scene's end
        transition = chunk.transition
        mode = mode_name(transition.mode) if transition is not None else "smooth"
        manual = getattr(transition, "recall_source", None)
        plan = plan_switch(mode, self.config, self.pool, dest_scene=chunk.scene_index,
                           cache_frames=len(self.slots), has_select=self.scenes.first_frame(0) is not None,
                           router=self.router, manual=manual)
        s = chunk.tokens_per_frame
        n, r, o = len(self.slots), plan.memory_frames, plan.old_recent
        for i, st in enumerate(self._layers):
            if st is None:
                continue
            old_k, old_v = st.k[:, :, (n - o) * s:n * s].clone(), st.v[:, :, (n - o) * s:n * s].clone()
            st.k[:, :, r * s:(r + o) * s], st.v[:, :, r * s:(r + o) * s] = old_k, old_v
            if plan.memory_from == "pool":
                mk, mv = plan.memory[i]  # type: ignore[index]
                st.k[:, :, :s] = mk.to(st.k.device, st.k.dtype, non_blocking=True)
                st.v[:, :, :s] = mv.to(st.v.device, st.v.dtype, non_blocking=True)
            elif plan.memory_from == "current_select":
                st.k[:, :, :s], st.v[:, :, :s] = self.scenes.first_frame(i)  # type: ignore[misc]
            # "slot0": the memory already sits in slot 0
            reset_for_scene(st, r + o, s, self._source_cap)
        self.ring.reset()
        self.decay.reset()
        self.scenes.start(chunk.scene_index)
        old_slots = self.slots
        label = plan.memory_label
        self.slots = ([SlotInfo(OLD_MEMORY, None, None, label)] if r else []) + \
                     [SlotInfo(OLD_MEMORY, x.frame, x.scene_frame, "old_recent") for x in old_slots[n - o:n]]
        if plan.memory_from == "slot0" and old_slots:
            self.slots[0] = SlotInfo(OLD_MEMORY, old_slots[0].frame, old_slots[0].scene_frame, label)
        self._source_meta = [None] * self._source_cap
        for p, info in enumerate(self.slots[:self._source_cap]):
            self._source_meta[p] = info
        self._offset = r + o
        self._local_timing = plan.scene_local_timing
        self._rope_mode = plan.rope_position_mode
        self._pending_jump = plan.jump
        self._rolled_in_scene = False
        self.decay.start(plan.decay, s)
        if mode != "smooth":  # a cut or recall starts a new smooth chain (§6.2)
            self.pool.reset_smooth_anchors()
        self._switch_report = dict(mode=mode, implicit=transition is None, memory=label, old_recent_frames=o,
                                   rope_jump=plan.jump, routing=plan.routing)

    # ------------------------------------------------------------------------------------------ attention
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        chunk, call = self._require_chunk(), self._require_call()
        cs = self._chunk_state
        s, c = cs["s"], chunk.num_frames
        if k.ndim != 4 or k.shape[2] != c * s or v.shape != k.shape:
            raise ValueError(f"layer {layer}: k/v must be [B, H, {c * s}, D] for a {c}-frame chunk of {s} tokens "
                             f"per frame, got k {tuple(k.shape)}, v {tuple(v.shape)}")
        st = self._layers[layer] or self._allocate(layer, k)
        if layer in cs["compress"]:
            cs["compress"].discard(layer)
            keys, values = self.ring.select(layer, q, s)
            a, n = self.mem.anchor_frames * s, keys.shape[2]
            st.k[:, :, a:a + n], st.v[:, :, a:a + n] = keys, values
            self.decay.reset_rows(layer, a, a + n)
        a = cs["plan"].current_start * s
        st.k[:, :, a:a + c * s] = k
        st.v[:, :, a:a + c * s] = v
        if call.commit:
            cs["committed"] = True
            self._commit(layer, st, q, k, v, s)
        n = len(self.slots) * s
        q_pos, k_pos = self._positions(layer, k.device)
        return AttentionInputs(q_pos, [KVSpan(st.k[:, :, :n], st.v[:, :, :n], k_pos, self.decay.weights(layer, n))])

    def _allocate(self, layer: int, like: torch.Tensor) -> LayerState:
        st = allocate_layer(like, self._chunk_state["s"], self.mem.window_frames,
                            source_frames=self._source_cap)
        self.ring.allocate(layer, like, self._chunk_state["s"])
        self.scenes.allocate(layer, like)
        self.decay.allocate(layer, self.mem.window_frames * self._chunk_state["s"], like.device)
        self._layers[layer] = st
        return st

    def _positions(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        cs = self._chunk_state
        key = str(device)
        if key not in cs["positions"]:
            rows, cols = self._grid  # type: ignore[misc]
            k_pos = slot_positions(cs["times"], rows, cols, device)
            start, c = cs["plan"].current_start * cs["s"], self._require_chunk().num_frames
            cs["positions"][key] = (k_pos[start:start + c * cs["s"]], k_pos)
        q_pos, k_pos = cs["positions"][key]
        spatial = self.ring.origin_spatial(layer)
        if self.mem.compressed_keep_origin_positions and spatial is not None and self._rolled_in_scene:
            if layer not in cs["origin_positions"]:
                cols = self._grid[1]  # type: ignore[index]
                cs["origin_positions"][layer] = origin_positions(k_pos, self.mem.anchor_frames * cs["s"], spatial,
                                                                 cols)
            k_pos = cs["origin_positions"][layer]
        return q_pos, k_pos

    def _commit(self, layer: int, st: LayerState, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, s: int) -> None:
        """Bookkeeping of a clean (commit) pass: history, calibration, anchor source, recall statistics."""
        cs = self._chunk_state
        self.ring.record(layer, cs["ring"], q, k, v, s)
        for j, p in cs["mirror"]:
            st.src_k[:, :, p * s:(p + 1) * s] = k[:, :, j * s:(j + 1) * s]  # type: ignore[index]
            st.src_v[:, :, p * s:(p + 1) * s] = v[:, :, j * s:(j + 1) * s]  # type: ignore[index]
        if cs["first_of_scene"]:
            previous = self.scenes.first_frame(layer)
            self.decay.capture_rates(layer, k[:, :, :s], None if previous is None else previous[0], st.k[:, :, :s], s)
        self.scenes.record(layer, cs["local"], q, k, v, s, first=cs["first_of_scene"])

    # ------------------------------------------------------------------------------------------ chunk end
    def end_chunk(self) -> dict[str, Any]:
        chunk = self._require_chunk()
        cs = self._chunk_state
        s, c = cs["s"], chunk.num_frames
        if cs["committed"]:
            batch = self._live_layers()[0].k.shape[0]
            self.ring.commit(cs["ring"], chunk.start_frame, batch * c * s)
            for j, p in cs["mirror"]:
                self._source_meta[p] = SlotInfo(ANCHOR, chunk.start_frame + j, cs["local"] + j)
            if cs["first_of_scene"]:
                self.decay.rates_captured()
            self.scenes.end_chunk(batch * c * s, first=cs["first_of_scene"], scene_end=chunk.is_scene_end)
        report = self._report(chunk)
        if self.decay.step():
            report["evicted_frames"] = self._evict(s)
        return report

    def _evict(self, s: int) -> int:
        """Drop the old memory at the window head (§5.4) unless rolling already pushed it into the anchors."""
        self.decay.stop()
        drop = 0
        while drop < len(self.slots) and self.slots[drop].region == OLD_MEMORY:
            drop += 1
        if drop == 0 or self._rolled_in_scene:
            return 0  # already rolled (out or into the anchors); it leaves by rolling
        n = len(self.slots)
        src_drop = 0
        while src_drop < len(self._source_meta) and self._source_meta[src_drop] is not None \
                and self._source_meta[src_drop].region == OLD_MEMORY:  # type: ignore[union-attr]
            src_drop += 1
        for st in self._live_layers():
            drop_head_frames(st, drop, n, s, src_drop)
        self.decay.reset()
        self.slots = self.slots[drop:]
        self._source_meta = self._source_meta[src_drop:] + [None] * src_drop
        self._offset = max(0, self._offset - drop)
        return drop

    # ------------------------------------------------------------------------------------------ reporting
    def _report(self, chunk: ChunkInfo) -> dict[str, Any]:
        cs, s = self._chunk_state, self._chunk_state["s"]
        times = cs["times"]
        c = chunk.num_frames
        start = cs["plan"].current_start
        report: dict[str, Any] = {
            "chunk": chunk.index, "scene": self.scenes.scene, "policy": "echo",
            "layout": [slot_label(i) for i in self.slots],
            "tokens": region_tokens(self.slots, s),
            "cache_frames": len(self.slots), "cache_tokens": len(self.slots) * s,
            "budget_tokens": self.mem.window_frames * s, "cache_bytes": self.nbytes(),
            "rope_t": region_times(self.slots, times), "query_t": times[start:start + c],
            "rope_jump": cs["jump"], "clock_frame": cs["pc_start"],
            "anchor_source_frames": [i.scene_frame for i in self.slots if i.region == ANCHOR],
            "pool_size": len(self.pool), "pool_bytes": self.pool.nbytes(),
            "calibrated": self.ring.calibrated,
        }
        report.update(self.ring.report(self._rolled_in_scene))
        report.update(self.decay.report(sum(1 for i in self.slots if i.region == OLD_MEMORY) * s, s))
        if self._switch_report is not None:
            report["transition"] = self._switch_report
        return report

    # ------------------------------------------------------------------------------------------ accounting
    def token_count(self, layer: int = 0) -> int:
        if self._layers[layer] is None or self._grid is None:
            return 0
        return len(self.slots) * self._grid[0] * self._grid[1]

    def nbytes(self) -> int:
        tensors = [t for st in self._live_layers() for t in st.tensors()]
        tensors += [t for rl in self.ring.allocated() for t in rl.tensors()]
        tensors += [t for lw in self.decay.allocated() for t in lw.tensors()]
        tensors += [t for sl in self.scenes.allocated() for t in sl.tensors()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def release(self) -> None:
        self._layers = [None] * self.num_layers
        self.ring.release()
        self.decay.release()
        self.scenes.release()
        self.pool.entries.clear()
        self.pool.reset_smooth_anchors()
        self.slots = []
        self._chunk_state = {}

