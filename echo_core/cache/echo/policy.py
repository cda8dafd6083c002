"""EchoCache: the Echo-Forcing KV-cache policy, composing memory layout, compression, recall, decay, switches.

Call sequence (driven by the sampler): begin_chunk -> per forward: begin_call + attend for every layer ->
end_chunk. Planning happens once per chunk in Python (layouts are identical across layers) into a ChunkPlan;
tensor work happens per layer, in the mechanism that owns the tensors (see the package docstring for who owns
what). The hot path (attend) has no host synchronisation; `end_chunk` syncs a few scalars for its report.

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
* Ours: kv_dtype "float8_e4m3fn" keeps the window's K and V in fp8 on the compute device (window.py) and attends
  without the rotated-key memo (keys rotated per call from the dequantised span, one layer's temporaries); the
  side state stays in the model dtype (on the host when offloading).
* Ours: saved scenes (the scene library) are pre-loaded into the pool; `@name` recalls one by name, and a video may
  open with a recall (`open_with`): the first chunk starts from [recall frame] exactly as after a recall switch.
"""

from __future__ import annotations

from typing import Any

import torch

from echo_core.cache.base import AttentionInputs, CachePolicy, ChunkInfo, KVSpan
from echo_core.cache.echo.chunk import ChunkPlan, ChunkProgress
from echo_core.cache.echo.compression import HistoryRing
from echo_core.cache.echo.decay import DecayState
from echo_core.cache.echo.memory import (
    ANCHOR,
    AnchorSource,
    Layout,
    SlotInfo,
    region_times,
    region_tokens,
    slot_label,
    switch_slots,
)
from echo_core.cache.echo.recall import ScenePool, SceneRecorder
from echo_core.cache.echo.transitions import mode_name, plan_switch, requested_source
from echo_core.cache.echo.window import Window
from echo_core.cache.kv_quant import KV_DTYPES
from echo_core.cache.placement import GPU, HOST, Stager, resolve_offload, sync
from echo_core.config import EchoConfig


class EchoCache(CachePolicy):
    kv_dtypes = KV_DTYPES  # the K/V storages it implements (run.check_echo_kv_dtype)

    def __init__(self, num_layers: int, config: EchoConfig | None = None, router: Any = None,
                 pool_device: torch.device | str = "cpu", offload: Any = "auto"):
        """`offload`: where the raw window keys and the side state live ("auto": pinned CPU memory when the model
        runs on CUDA, else with the rest; None: on the compute device; a device: there, e.g. "cpu" in tests)."""
        super().__init__(num_layers)
        if config is not None and not isinstance(config, EchoConfig):
            raise TypeError(f"config must be an EchoConfig, got {type(config).__name__}")
        self.config = config or EchoConfig()
        self.mem = self.config.memory
        self.router = router
        self.pool = ScenePool(self.config.recall_frames.pool_max_size, pool_device)
        self.layout = Layout(self.mem)
        self.window = Window(num_layers, self.mem.window_frames, self.config.kv_dtype)
        self.source = AnchorSource(num_layers, self.config)
        self.ring = HistoryRing(num_layers, self.mem)
        self.scenes = SceneRecorder(num_layers, self.config, self.pool)
        self.decay = DecayState(num_layers, self.mem.window_frames)
        self._grid: tuple[int, int] | None = None
        self._switch_report: dict[str, Any] | None = None
        self._plan: ChunkPlan | None = None
        self._progress = ChunkProgress(set())
        self._opening: Any = None  # a recall into the first scene (timeline.Transition), see open_with
        self._opening_tensors: tuple | None = None  # that switch's tensor edits, replayed as layers allocate
        self._offload = offload
        self._compute: torch.device | None = None  # resolved at the first call, with the host device
        self._host: torch.device | None = None
        self.stager = Stager()  # device copies of host keys, one layer ahead

    def open_with(self, transition: Any) -> None:
        """Open the video with `transition` (a recall of a pre-loaded saved scene) before its first chunk."""
        if self._grid is not None:
            raise RuntimeError("open_with must be called before the first chunk")
        self._opening = transition

    @property
    def slots(self) -> list[SlotInfo]:
        return self.layout.slots

    # ------------------------------------------------------------------------------------------ planning
    def begin_chunk(self, chunk: ChunkInfo) -> None:
        c, s = chunk.num_frames, chunk.tokens_per_frame
        if not 1 <= c <= self.mem.frames_per_chunk:
            raise ValueError(f"chunk {chunk.index} has {c} frames; EchoCache takes 1..frames_per_chunk "
                             f"({self.mem.frames_per_chunk}) frames per chunk (memory.frames_per_chunk)")
        rows, cols = chunk.grid
        opening = None
        if self._grid is None:
            self._grid = (rows, cols)
            self.scenes.scene = chunk.scene_index
            opening, self._opening = self._opening, None
        elif (rows, cols) != self._grid:
            raise ValueError(f"chunk grid changed from {self._grid} to {(rows, cols)} within one run; "
                             "use a new EchoCache per resolution")
        self._switch_report = None
        self._opening_tensors = None
        if self.host is not None:  # the host edits below wait for the previous chunk's copies down
            sync(self._compute)
            self.stager.forget()
        if opening is not None:
            if chunk.prefill:
                raise ValueError("a video that opens with a recall cannot also continue start latents")
            self._switch(chunk, opening)
        elif chunk.scene_index != self.scenes.scene or (chunk.transition is not None and chunk.index > 0):
            self._switch(chunk)
        super().begin_chunk(chunk)
        placed = self.layout.place(chunk, self.source.meta)
        self.window.apply_moves(placed.moves, s, self.source.layers)
        self.decay.apply_moves(placed.moves, s)
        compress = placed.compress and self.ring.ready
        if compress:
            self.layout.mark_compressed()
        if placed.compress:
            self.ring.seed_origins(self.layout.compressed_region(), s)
        jump, times = self.layout.times(c)
        self._plan = ChunkPlan(frames=c, grid=(rows, cols),
                               local=chunk.start_frame - chunk.scene_start_frame, clock=placed.clock,
                               start=placed.current_start, jump=jump, times=tuple(times), compress=compress,
                               ring=self.ring.plan(placed.clock, c), mirror=self.source.mirror(placed.clock, c))
        self._progress = ChunkProgress(set(range(self.num_layers)) if compress else set())
        self._prefetch(0)

    @property
    def host(self) -> torch.device | None:
        """The offload device, or None when everything lives on the compute device."""
        return self._host

    def _place(self, compute: torch.device) -> None:
        """At the first call: the compute device is known, so is where each part keeps its host-side state."""
        self._compute = compute
        host = resolve_offload(self._offload, compute)
        self._host = host
        for part in (self.source, self.ring, self.scenes):
            part.host = host
        self.window.host = None if self.window.quantized else host  # fp8 keys stay on the device (window.py)

    def _prefetch(self, layer: int) -> None:
        """Start copying what `layer`'s first call of the chunk reads from the host: its raw window keys, and its
        history ring when the chunk re-selects the compressed region."""
        if self.host is None or self._compute is None or layer >= self.num_layers:
            return
        kv = self.window.layers[layer]
        if kv is None:
            return
        if self.window.host is not None:
            self.stager.prefetch("window_k", layer, kv.k, len(self.slots) * self._plan_s(), self._compute)
        rl = self.ring.layers[layer]
        if layer in self._progress.pending_compress and rl is not None:
            self.stager.prefetch("ring_k", layer, rl.k, rl.k.shape[2], self._compute)
            self.stager.prefetch("ring_v", layer, rl.v, rl.v.shape[2], self._compute)

    def _plan_s(self) -> int:
        return self._require_plan().tokens_per_frame

    def _require_plan(self) -> ChunkPlan:
        self._require_chunk()
        if self._plan is None:
            raise RuntimeError("EchoCache.begin_chunk must be called before attend / end_chunk")
        return self._plan

    def _switch(self, chunk: ChunkInfo, transition: Any = None) -> None:
        """Rebuild the window for the scene `chunk` opens (§6.3); `transition`: the opening recall of a video."""
        if not self.scenes.finished:
            self.scenes.finish()  # the sampler did not flag the previous chunk as the scene's end
        transition = transition or chunk.transition
        mode = mode_name(transition.mode) if transition is not None else "smooth"
        plan = plan_switch(mode, self.config, self.pool, dest_scene=chunk.scene_index,
                           cache_frames=len(self.slots), has_select=self.scenes.first_frame(0) is not None,
                           router=self.router, manual=requested_source(transition, self.pool))
        s, r, o = chunk.tokens_per_frame, plan.memory_frames, plan.old_recent
        # "slot0" (or none): slot 0 keeps what it holds
        memory = {"pool": plan.memory, "current_select": self.scenes.first_frames()}.get(plan.memory_from)
        slots = switch_slots(self.slots, r, o, plan.memory_label, plan.memory_from == "slot0")
        self._switch_tensors(len(self.slots), r, o, s, memory, slots, plan.decay)
        if self.window.layers[0] is None:  # the opening of a video: layers allocate during its first call
            self._opening_tensors = (r, o, s, memory, slots, plan.decay)
        self.layout.restart(slots, r + o, plan.scene_local_timing, plan.rope_position_mode, plan.jump)
        self.ring.reset()
        self.scenes.start(chunk.scene_index)
        if mode != "smooth":  # a cut or recall starts a new smooth chain (§6.2)
            self.pool.reset_smooth_anchors()
        self._switch_report = dict(mode=mode, implicit=transition is None, memory=plan.memory_label,
                                   old_recent_frames=o, rope_jump=plan.jump, routing=plan.routing)
        if getattr(transition, "from_scene", 0) < 0:
            self._switch_report["opening"] = True

    def _switch_tensors(self, frames: int, r: int, o: int, s: int, memory: Any, slots: list[SlotInfo],
                        decay: Any) -> None:
        """A switch's edits of the allocated layers' tensors: window [memory | old recent], anchor source, decay.
        Idempotent on layers already edited, so the opening replays it as each layer allocates."""
        self.window.rebuild(frames, r, o, s, memory)
        self.source.restart(slots, self.window.readable(), r + o, s)
        self.decay.start(decay, s)

    # ------------------------------------------------------------------------------------------ attention
    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        plan, call = self._require_plan(), self._require_call()
        s, c = plan.tokens_per_frame, plan.frames
        if k.ndim != 4 or k.shape[2] != c * s or v.shape != k.shape:
            raise ValueError(f"layer {layer}: k/v must be [B, H, {c * s}, D] for a {c}-frame chunk of {s} tokens "
                             f"per frame, got k {tuple(k.shape)}, v {tuple(v.shape)}")
        if self.window.layers[layer] is None:
            if self._compute is None:
                self._place(k.device)
            for part in self._parts():
                part.allocate(layer, k, s)
            if self._opening_tensors is not None:
                self._switch_tensors(0, *self._opening_tensors)
        compressed = None
        if layer in self._progress.pending_compress:  # the chunk's first call re-selects the compressed region
            staged = self._staged_ring(layer, k.device)
            self._progress.pending_compress.discard(layer)
            compressed = self.ring.select(layer, q, s, staged)
            a = self.mem.anchor_frames * s
            self.window.write(layer, a, *compressed)
            self.decay.reset_rows(layer, a, a + compressed[0].shape[2])
        self.window.write_own(layer, plan.own_rows[0], k, v, call.commit)
        if call.commit:
            self._progress.committed = True
            self._commit(layer, plan, q, k, v)
        n = len(self.slots) * s
        q_pos, k_pos = self._positions(layer, plan, k.device)
        keys, values = self.window.view(layer, n)
        if self.window.quantized:  # the chunk's own rows unrounded; rotated per call, no memo (window.py)
            a, b = plan.own_rows
            keys[:, :, a:b], values[:, :, a:b] = k, v
            return AttentionInputs(q_pos, [KVSpan(keys, values, k_pos, self.decay.weights(layer, n))])
        if self.window.host is not None:
            keys = self._device_keys(layer, n, k, compressed, plan)
        span = KVSpan(keys, values, k_pos, self.decay.weights(layer, n))
        return self.reusable(layer, q_pos, span, (plan.own_rows,))

    def _staged_ring(self, layer: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        rl = self.ring.layers[layer]
        if self.host is None or rl is None:
            return None
        return (self.stager.get("ring_k", layer, rl.k, rl.k.shape[2], device),
                self.stager.get("ring_v", layer, rl.v, rl.v.shape[2], device))

    def _device_keys(self, layer: int, n: int, k: torch.Tensor, compressed: tuple[torch.Tensor, torch.Tensor] | None,
                     plan: ChunkPlan) -> torch.Tensor:
        """The raw window keys of an offloading cache on the compute device: all of them when the layer's memo is
        rebuilt (the chunk's first call; prefetched while the previous layer ran, and the next layer's copy starts
        now), else only the rows the model reads besides its memo, the chunk's own."""
        host_k = self.window.get(layer).k
        if self._memos[layer].fresh(self._epoch, n):
            keys = self.stager.scratch("window_k", layer, host_k, n, k.device)
        else:
            keys = self.stager.get("window_k", layer, host_k, n, k.device)
            self._prefetch(layer + 1)
        if compressed is not None:
            a = self.mem.anchor_frames * plan.tokens_per_frame
            keys[:, :, a:a + compressed[0].shape[2]] = compressed[0]
        a, b = plan.own_rows
        keys[:, :, a:b] = k
        return keys

    def _commit(self, layer: int, plan: ChunkPlan, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Bookkeeping of a clean (commit) pass: history, calibration, anchor source, recall statistics."""
        s = plan.tokens_per_frame
        self.ring.record(layer, plan.ring, q, k, v, s)
        self.source.record(layer, plan.mirror, k, v, s)
        if plan.first_of_scene:  # diff rates compare the new scene's first frame with the memory (before capture)
            self.decay.capture_rates(layer, k[:, :, :s], self.scenes.first_frame(layer),
                                     self.window.view(layer, s)[0], s)
        self.scenes.record(layer, plan.local, q, k, v, s, first=plan.first_of_scene)

    def _positions(self, layer: int, plan: ChunkPlan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        q_pos, k_pos = self._progress.positions(plan, device)
        spatial = self.ring.origin_spatial(layer)
        if self.mem.compressed_keep_origin_positions and spatial is not None and self.layout.rolled_in_scene:
            k_pos = self._progress.origin_positions(layer, k_pos, self.mem.anchor_frames * plan.tokens_per_frame,
                                                    spatial, plan.grid[1])
        return q_pos, k_pos

    # ------------------------------------------------------------------------------------------ chunk end
    def end_chunk(self) -> dict[str, Any]:
        chunk, plan = self._require_chunk(), self._require_plan()
        s, c = plan.tokens_per_frame, plan.frames
        if self.host is not None:  # pooling and an eviction below read what this chunk's calls copied down
            sync(self._compute)
        if self._progress.committed:
            queries = self.window.batch() * c * s
            self.ring.commit(plan.ring, chunk.start_frame, queries)
            self.source.commit(plan.mirror, chunk.start_frame, plan.local)
            if plan.first_of_scene:
                self.decay.rates_captured()
            self.scenes.end_chunk(queries, first=plan.first_of_scene, scene_end=chunk.is_scene_end)
        report = self._report(chunk, plan)
        if self.decay.step():
            report["evicted_frames"] = self._evict(s)
        return report

    def _evict(self, s: int) -> int:
        """Drop the old memory at the window head (§5.4) unless rolling already pushed it into the anchors."""
        self.decay.stop()
        drop = self.layout.old_memory_head()
        if drop == 0 or self.layout.rolled_in_scene:
            return 0  # already rolled (out or into the anchors); it leaves by rolling
        self.window.drop_head(drop, len(self.slots), s)
        self.decay.reset()
        self.source.drop_head(self.source.old_memory_head(), s)
        self.layout.drop_head(drop)
        return drop

    def _report(self, chunk: ChunkInfo, plan: ChunkPlan) -> dict[str, Any]:
        s, slots, times = plan.tokens_per_frame, self.slots, list(plan.times)
        report: dict[str, Any] = {
            "chunk": chunk.index, "scene": self.scenes.scene, "policy": "echo",
            "layout": [slot_label(i) for i in slots], "tokens": region_tokens(slots, s),
            "cache_frames": len(slots), "cache_tokens": len(slots) * s,
            "budget_tokens": self.mem.window_frames * s, "cache_bytes": self.nbytes(),
            # by place: the compute device (storage, context memo, staging) and the offloaded host storage
            "gpu_bytes": (placed := self.nbytes_by_place())[GPU], "host_bytes": placed[HOST],
            "rope_t": region_times(slots, times), "query_t": times[plan.start:plan.start + plan.frames],
            "rope_jump": plan.jump, "clock_frame": plan.clock,
            "anchor_source_frames": [i.scene_frame for i in slots if i.region == ANCHOR],
            "pool_size": len(self.pool), "pool_bytes": self.pool.nbytes(), "calibrated": self.ring.calibrated,
        }
        report.update(self.ring.report(self.layout.rolled_in_scene))
        report.update(self.decay.report(self.layout.old_memory_frames() * s, s))
        if self._switch_report is not None:
            report["transition"] = self._switch_report
        return report

    # ------------------------------------------------------------------------------------------ accounting
    def token_count(self, layer: int = 0) -> int:
        if self.window.layers[layer] is None or self._grid is None:
            return 0
        return len(self.slots) * self._grid[0] * self._grid[1]

    def _parts(self) -> tuple[Window, AnchorSource, HistoryRing, SceneRecorder, DecayState]:
        """The owners of per-layer tensors (allocated together at a layer's first call)."""
        return self.window, self.source, self.ring, self.scenes, self.decay

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for part in self._parts() for per_layer in part.allocated()
                   for t in per_layer.tensors())

    def nbytes_by_place(self) -> dict[str, int]:
        """Bytes per place. "gpu": everything on the compute device during a chunk (the cache's device storage,
        the model's context memo, the staging buffers; also split out as "storage", "context", "staging");
        "host": the offloaded storage (the scene pool apart: `pool.nbytes()`)."""
        out = {GPU: 0, HOST: 0}
        for part in self._parts():
            for per_layer in part.allocated():
                for place, t in per_layer.placed():
                    out[place] += t.numel() * t.element_size()
        out["storage"], out["context"], out["staging"] = out[GPU], self.context_nbytes(), self.stager.nbytes()
        out[GPU] += out["context"] + out["staging"]
        return out

    def release(self) -> None:
        self.stager.release()
        self.release_context()
        for part in self._parts():
            part.release()
        self.pool.entries.clear()
        self.pool.reset_smooth_anchors()
        self.layout.slots = []
        self._plan = None
        self._opening = self._opening_tensors = None
