"""Scene switch decisions (spec §6.3, §7.3): what memory a new scene starts from, and how far away in RoPE time.

At a switch the window is rebuilt from at most [memory frame | old recent frames]; everything else (anchors,
compressed history, recent) is discarded. This module only decides; the policy moves the tensors.

| mode    | compress (default)                                   | select                     | resink        |
| smooth  | recall frame of the smooth chain's first scene,      | first frame of the chain's | window slot 0 |
|         | else the newest recall frame in the pool             | first scene, else current  |               |
| hardcut | newest recall frame (the scene that just ended)      | current scene's first frame| window slot 0 |
| recall  | routed pool scene's recall frame                     | routed scene's first frame | (rejected)    |

When the wanted memory does not exist (the official code raises for an empty pool) no memory is inserted and
the report says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from echo_core.cache.echo.decay import DecayPlan, plan_decay
from echo_core.cache.echo.recall import LayerKV, ScenePool
from echo_core.config import EchoConfig


@dataclass
class SwitchPlan:
    mode: str
    memory: LayerKV | None  # per-layer (k, v) from the pool, or None
    memory_from: str  # "pool" | "current_select" | "slot0" | "none"
    memory_label: str  # human-readable origin for the report
    old_recent: int  # frames of the previous window's tail kept after the memory
    jump: int
    decay: DecayPlan | None
    scene_local_timing: bool
    rope_position_mode: str
    routing: dict[str, Any] | None = None

    @property
    def memory_frames(self) -> int:
        return 0 if self.memory_from == "none" else 1


def mode_name(mode: Any) -> str:
    return str(getattr(mode, "value", mode)).lower()


def requested_source(transition: Any, pool: ScenePool) -> int | None:
    """The pool scene a transition asks for by hand: its `@N` (0-based) or the saved scene of its `@name`."""
    name = getattr(transition, "recall_name", None)
    if name is None:
        return getattr(transition, "recall_source", None)
    entry = pool.named(name)
    if entry is None:  # the run checks the names before it starts; this is a hand-driven cache
        raise ValueError(f"the timeline recalls the saved scene {name!r}, which is not loaded "
                         f"(loaded: {[e.name for e in pool.entries if e.saved]})")
    return entry.scene_index


def plan_switch(mode: Any, cfg: EchoConfig, pool: ScenePool, *, dest_scene: int, cache_frames: int,
                has_select: bool, router: Any = None, manual: int | None = None) -> SwitchPlan:
    """Decide the switch into scene `dest_scene` (0-based). `cache_frames`: frames in the window now;
    `has_select`: whether the ending scene's first frame was captured; `manual`: 0-based scene asked for."""
    name = mode_name(mode)
    tc = cfg.mode(name)
    memory: LayerKV | None = None
    source, label, routing = "none", "none", None
    jump = tc.rope_jump.value
    if tc.use_old_memory:
        kind = tc.old_memory_source
        if name == "recall":
            memory, label, routing, jump = _route(cfg, pool, kind, dest_scene, router, manual)
            source = "pool" if memory is not None else "none"
        elif kind == "resink":
            source, label = ("slot0", "window slot 0") if cache_frames > 0 else ("none", "none (empty window)")
        elif kind == "compress":
            if name == "smooth" and pool.compress_anchor is not None:
                memory, label = pool.compress_anchor, f"recall frame of scene {pool.compress_anchor_scene}"
            else:
                entry = pool.newest("compress")
                if entry is not None:
                    memory, label = entry.compress, f"recall frame of scene {entry.scene_index}"
            source = "pool" if memory is not None else "none"
            if memory is None:
                label = "none (no scene recall frame in the pool)"
        else:  # select
            if name == "smooth" and pool.select_anchor is not None:
                source, memory = "pool", pool.select_anchor
                label = f"first frame of scene {pool.select_anchor_scene}"
            elif has_select:
                source, label = "current_select", "first frame of the ending scene"
            else:
                label = "none (the ending scene's first frame was not captured)"
    old_recent = min(tc.old_recent_frames, cache_frames) if tc.use_old_recent else 0
    plan = SwitchPlan(mode=name, memory=memory, memory_from=source, memory_label=label, old_recent=old_recent,
                      jump=jump, decay=None, scene_local_timing=tc.use_scene_local_timing,
                      rope_position_mode=tc.rope_position_mode or cfg.memory.rope_position_mode, routing=routing)
    plan.decay = plan_decay(name, tc, plan.memory_frames, old_recent)
    return plan


def _route(cfg: EchoConfig, pool: ScenePool, kind: str, dest_scene: int, router: Any, manual: int | None):
    """Pick the recalled scene; returns (memory, label, routing report, jump)."""
    rj = cfg.recall.rope_jump
    candidates = [e.scene_index for e in pool.with_kind(kind)]
    if manual is None:
        manual = cfg.routing.manual_source(dest_scene)
    report: dict[str, Any] = {"candidates": candidates, "manual": manual}
    if router is not None:
        decision = router.route(dest_scene, candidates, manual)
        chosen = None if decision is None else decision.scene_index
        if decision is not None:
            report.update(scene=chosen, score=float(decision.score), reason=str(decision.reason),
                          rope_jump=int(decision.rope_jump))
            scores = getattr(decision, "scores", None)
            if scores is not None:
                report["scores"] = [[int(i), float(s)] for i, s in scores]
        else:
            report.update(scene=None, score=None, reason="empty pool", rope_jump=rj.max_value)
        if rj.strategy == "similarity":
            jump = int(decision.rope_jump) if decision is not None else rj.max_value
        else:
            jump = rj.value
    else:
        if manual is not None:
            if manual not in candidates:
                raise ValueError(f"manual recall of scene {manual + 1} (index {manual}) is impossible: the scene "
                                 f"pool holds {[i + 1 for i in candidates]} (1-based); recall an earlier, finished "
                                 "scene")
            chosen, reason = manual, "manual"
        else:
            chosen, reason = (candidates[-1] if candidates else None), "newest (no router)"
        jump = rj.value
        report.update(scene=chosen, score=None, reason=reason if chosen is not None else "empty pool",
                      rope_jump=jump)
    report["rope_jump_applied"] = jump
    if chosen is None:
        return None, "none (recall found no scene)", report, jump
    entry = pool.get(chosen, kind)
    assert entry is not None  # chosen among the pool's scenes of this kind
    what = "recall frame" if kind == "compress" else "first frame"
    if entry.saved:
        report["name"] = entry.name
        return entry.layers(kind), f"{what} of saved scene {entry.name!r}", report, jump
    return entry.layers(kind), f"{what} of scene {chosen}", report, jump
