"""The compact run summary the sampler node shows (web/js/echo_panels.js draws it) - presentation only.

It reads the core's memory report (echo_core.session.memory_report: per-chunk cache reports, switch reports)
and the parsed timeline, and keeps what a user looks at after a run: per scene the transition into it, the
recalled scene and the RoPE jump; the peak cache on the compute device and on the host (recall pool, offload); seconds
per chunk. Everything stays JSON so the same dict can be drawn, tested and read by scripts.
"""

from __future__ import annotations

from typing import Any


def _mb(n: float) -> float:
    return round(n / 2**20, 3)


def run_summary(report: dict[str, Any], timeline: Any, *, device: str, size: tuple[int, int], steps: int,
                fps: float) -> dict[str, Any]:
    """report: memory_report(...) of one run; timeline: the parsed echo_core Timeline it ran."""
    chunks = report.get("chunk_reports", [])
    # The echo policy reports each scene switch on the first chunk of the new scene.
    switches = {r.get("scene"): r["transition"] for r in chunks if isinstance(r.get("transition"), dict)}
    scenes = []
    planned = {t.to_scene: t for t in timeline.transitions}
    for i, scene in enumerate(timeline.scenes):
        entry: dict[str, Any] = {"scene": i + 1, "prompt": scene.prompt, "chunks": scene.num_chunks,
                                 "transition": None, "recall_source": None, "rope_jump": None}
        t = planned.get(i)
        if t is not None:
            entry["transition"] = getattr(t.mode, "value", str(t.mode))
            if t.recall_source is not None:
                entry["recall_source"] = t.recall_source + 1
            switch = switches.get(i)
            if switch is not None:
                entry["transition"] = switch.get("mode", entry["transition"])
                entry["rope_jump"] = switch.get("rope_jump")
                routing = switch.get("routing") or {}
                if routing.get("scene") is not None:
                    entry["recall_source"] = int(routing["scene"]) + 1  # the core counts scenes from 0
        scenes.append(entry)
    walls = [float(r.get("wall_s", 0.0)) for r in chunks]
    return {
        "policy": report.get("policy"),
        "scenes": scenes,
        "chunks": len(chunks),
        "frames_per_chunk": report.get("frames_per_chunk"),
        "start_frames": report.get("start_frames", 0),  # latent frames given to continue from
        "latent_frames": (report.get("latent_shape") or [0, 0, 0])[2],  # start frames included
        "size": [size[1], size[0]],  # width, height
        "steps": steps,
        "fps": fps,
        "device": device,
        # By place, as the policy reports it (Echo: device storage + rotated context + staging; host: the recall
        # pool plus what an offloading cache keeps there); other policies report their cache bytes.
        "peak_device_mb": _mb(max((r.get("gpu_bytes", r.get("cache_bytes", 0)) for r in chunks), default=0)),
        "peak_host_mb": _mb(max((r.get("pool_bytes", 0) + r.get("host_bytes", 0) for r in chunks), default=0)),
        "seconds_per_chunk": round(sum(walls) / len(walls), 3) if walls else None,
        "wall_s": report.get("wall_s"),
    }


def summary_text(s: dict[str, Any]) -> str:
    """The same summary as plain lines (ComfyUI's own 'text' UI key; what a script or a log shows)."""
    lines = []
    for sc in s["scenes"]:
        how = ""
        if sc["transition"]:
            how = f" <- {sc['transition']}"
            if sc["recall_source"] is not None:
                how += f" of scene {sc['recall_source']}"
            if sc["rope_jump"] is not None:
                how += f", RoPE +{sc['rope_jump']}"
        lines.append(f"{sc['scene']}. {sc['prompt'][:48]} [{sc['chunks']} chunks]{how}")
    where = "GPU" if s["device"].startswith("cuda") else s["device"]
    lines.append(f"peak cache: {s['peak_device_mb']} MB on {where}, {s['peak_host_mb']} MB host (recall pool"
                 + (", offloaded cache)" if s["device"].startswith("cuda") else ")"))
    lines.append(f"{s['chunks']} chunks at {s['size'][0]}x{s['size'][1]}, {s['steps']} steps: "
                 f"{s['seconds_per_chunk']} s per chunk")
    return "\n".join(lines)
