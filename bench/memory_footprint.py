"""Bytes per component of the rolling and Echo-Forcing caches at the Wan2.1-T2V-1.3B geometry, measured.

The real caches are instantiated at the real token geometry (1560 tokens per latent frame at 832x480 and at
480x832, 12 heads x 128, bf16) with one layer on the CPU and driven through a multi-scene run with random K/V
(scene 1 fills the 21-frame window, a hard cut, a recall of scene 1 long enough to hold its recall candidates);
then `nbytes()` of the cache and of its scene pool are read and scaled to the model's 30 layers. Beside each
measurement: what the budget formula (echo_core/budget.py) says, and the difference.

    python bench/memory_footprint.py            # table
    python bench/memory_footprint.py --json     # one JSON object (totals for 30 layers)

Echo with fp8 K/V is not implemented: its row says so and `echo_fp8_gpu_bytes` is null.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

for _path in (str(Path(__file__).resolve().parents[1]),):
    if _path not in sys.path:  # appended, not prepended: never shadow a host's top-level modules
        sys.path.append(_path)

from echo_core.budget import human, policy_budget  # noqa: E402
from echo_core.cache.base import CachePolicy, CallInfo, ChunkInfo  # noqa: E402
from echo_core.cache.echo.policy import EchoCache  # noqa: E402
from echo_core.cache.rolling import RollingCache  # noqa: E402
from echo_core.config import EchoConfig  # noqa: E402
from echo_core.model.config import preset_with  # noqa: E402
from echo_core.run import ROLLING_SINK_FRAMES, ROLLING_WINDOW_FRAMES  # noqa: E402
from echo_core.timeline import Transition, TransitionMode  # noqa: E402

MODEL_LAYERS = 30
SCENES = ((7, None), (1, TransitionMode.HARDCUT), (3, TransitionMode.RECALL))  # chunks per scene, transition in


def drive(policy: CachePolicy, grid: tuple[int, int], layers: int, heads: int, head_dim: int,
          dtype: torch.dtype, seed: int = 0) -> None:
    """The sampler's call sequence (one denoising call and the commit call per chunk) with random q/k/v."""
    g = torch.Generator().manual_seed(seed)
    s = grid[0] * grid[1]
    index = frame = 0
    for scene, (chunks, mode) in enumerate(SCENES):
        start = frame
        for j in range(chunks):
            transition = None
            if j == 0 and scene > 0:
                transition = Transition(index, scene - 1, scene, mode, 0 if mode is TransitionMode.RECALL else None)
            policy.begin_chunk(ChunkInfo(index, frame, 3, grid, scene, start, transition, j == chunks - 1))
            shape = (1, heads, 3 * s, head_dim)
            q, k, v = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
            for step, commit in ((0, False), (1, True)):
                policy.begin_call(CallInfo(step, commit))
                for layer in range(layers):
                    policy.attend(layer, q, k, v)
            policy.end_chunk()
            index += 1
            frame += 3


def measure(height: int, width: int, layers: int = 1, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=layers)
    grid = (height // 16, width // 16)
    scale = MODEL_LAYERS / layers
    full = preset_with("wan2.1-t2v-1.3b")
    rolling = RollingCache(layers, window_frames=ROLLING_WINDOW_FRAMES, sink_frames=ROLLING_SINK_FRAMES)
    drive(rolling, grid, layers, cfg.num_heads, cfg.head_dim, dtype)
    echo = EchoCache(layers, EchoConfig())
    drive(echo, grid, layers, cfg.num_heads, cfg.head_dim, dtype)
    scenes = len(echo.pool)
    row = {
        "size": f"{width}x{height}", "tokens_per_frame": grid[0] * grid[1],
        "window_bytes": round(rolling.nbytes() * scale),
        "echo_gpu_bytes": round(echo.nbytes() * scale),
        "echo_host_bytes": round(echo.pool.nbytes() * scale),
        "pool_bytes_per_scene": round(echo.pool.nbytes() * scale / max(scenes, 1)),
        "pool_scenes": scenes,
        "echo_fp8_gpu_bytes": None,
        "formula": {
            "window_bytes": policy_budget(full, height, width, 3, "rolling", kv_dtype=dtype).gpu_bytes,
            "echo_gpu_bytes": (b := policy_budget(full, height, width, 3, "echo", kv_dtype=dtype)).gpu_bytes,
            "echo_host_bytes": b.host_bytes(scenes), "pool_bytes_per_scene": b.pool_bytes_per_scene,
            "echo_host_max_bytes": b.host_bytes(), "echo_components": b.gpu,
        },
        # the hot path's rotated context the model keeps per layer for the running chunk (formula; the memo is
        # filled by the model, which this bench does not run)
        "echo_context_bytes": b.context_bytes,
        "rolling_context_bytes": policy_budget(full, height, width, 3, "rolling", kv_dtype=dtype).context_bytes,
    }
    rolling.release()
    echo.release()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object (totals for 30 layers)")
    ap.add_argument("--layers", type=int, default=1, help="layers instantiated (scaled to 30)")
    args = ap.parse_args()
    rows = [measure(480, 832, args.layers), measure(832, 480, args.layers)]
    if args.json:
        first = rows[0]
        out = {k: first[k] for k in ("window_bytes", "echo_gpu_bytes", "echo_host_bytes", "pool_bytes_per_scene",
                                     "echo_fp8_gpu_bytes", "pool_scenes", "tokens_per_frame",
                                     "echo_context_bytes", "rolling_context_bytes")}
        out.update(layers=MODEL_LAYERS, dtype="bfloat16", measured_layers=args.layers, sizes=rows)
        print(json.dumps(out))
        return
    print(f"# Wan2.1-T2V-1.3B, {MODEL_LAYERS} layers (measured on {args.layers}, scaled), bf16 K/V, "
          "after 3 scenes (hard cut, recall)")
    print(f"{'policy':<16}{'size':<9}{'GPU (measured)':>16}{'GPU (formula)':>16}{'diff':>8}"
          f"{'host/scene':>13}{'host (3 scenes)':>17}")
    for r in rows:
        f = r["formula"]
        for name, gpu, fgpu, per, host in (
                ("rolling", r["window_bytes"], f["window_bytes"], 0, 0),
                ("echo", r["echo_gpu_bytes"], f["echo_gpu_bytes"], r["pool_bytes_per_scene"], r["echo_host_bytes"])):
            diff = f"{100 * (fgpu - gpu) / gpu:+.2f}%"
            print(f"{name:<16}{r['size']:<9}{human(gpu):>16}{human(fgpu):>16}{diff:>8}{human(per):>13}"
                  f"{human(host):>17}")
        print(f"{'echo + fp8 KV':<16}{r['size']:<9}{'n/a (not implemented)':>33}")
    comps = rows[0]["formula"]["echo_components"]
    print("echo components (formula, 30 layers): " + ", ".join(f"{k} {human(v)}" for k, v in comps.items()))


if __name__ == "__main__":
    main()
