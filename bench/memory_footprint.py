"""Bytes per component and per place of the rolling and Echo-Forcing caches at the Wan2.1-T2V-1.3B geometry, measured.

The real caches are instantiated at the real token geometry (1560 tokens per latent frame at 832x480 and at
480x832, 12 heads x 128, bf16) with two layers on the CPU and driven through a multi-scene run with random K/V
(scene 1 rolls the 21-frame window once, so the compressed region is selected; a hard cut; a recall of scene 1
long enough to hold its recall candidates), the model's own rotated context (wan.attention_context) filled on
every call as attention would. Then the bytes by place are read and scaled to the model's 30 layers: per-layer
storage and context times 30, the offloading cache's staging buffers (two layers' worth) as they are. Beside each
measurement: what the budget formula (echo_core/budget.py) says, and the difference.

* rolling: Self-Forcing's window (K/V on the device) plus its rotated keys;
* echo (offloaded, EchoCache's default on CUDA): on the device the window's values, the rotated keys, the small
  float32/int32 state and the staging buffers; on the host the raw window keys, history ring, anchor source,
  recall candidates and first frame (measured with a second CPU device object as the host);
* echo, not offloaded (`offload=None`, a CPU run): everything on the device, for reference;
* echo + fp8 K/V (`EchoConfig(kv_dtype="float8_e4m3fn")`, offloaded): the window's K and V in fp8 with float32
  scales, both on the device, no rotated-key memo (keys rotated per call: activations), the history ring's
  staging buffers; the side state (model dtype) on the host;
* pool: one finished scene in the scene pool (host).

    python bench/memory_footprint.py            # table
    python bench/memory_footprint.py --json     # one JSON object (totals for 30 layers, 832x480)

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
from echo_core.cache.kv_quant import FLOAT8 as FP8  # noqa: E402
from echo_core.cache.rolling import RollingCache  # noqa: E402
from echo_core.config import EchoConfig  # noqa: E402
from echo_core.model.config import preset_with  # noqa: E402
from echo_core.model.wan import attention_context  # noqa: E402
from echo_core.run import ROLLING_SINK_FRAMES, ROLLING_WINDOW_FRAMES  # noqa: E402
from echo_core.timeline import Transition, TransitionMode  # noqa: E402

MODEL_LAYERS = 30
SCENES = ((8, None), (1, TransitionMode.HARDCUT), (3, TransitionMode.RECALL))  # chunks per scene, transition in


def drive(policy: CachePolicy, grid: tuple[int, int], layers: int, heads: int, head_dim: int,
          dtype: torch.dtype, seed: int = 0) -> int:
    """The sampler's call sequence (one denoising call and the commit call per chunk) with random q/k/v, the
    model's rotated context built from what the policy returns; returns the peak of that context in bytes."""
    g = torch.Generator().manual_seed(seed)
    s = grid[0] * grid[1]
    index = frame = peak = 0
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
                    attention_context(policy.attend(layer, q, k, v), head_dim)
                    peak = max(peak, policy.context_nbytes())
            policy.end_chunk()
            index += 1
            frame += 3
    return peak


def _echo(layers: int, grid: tuple[int, int], cfg: Any, dtype: torch.dtype, offload: Any,
          kv_dtype: str = "model") -> dict[str, Any]:
    """One Echo run; bytes by place scaled to MODEL_LAYERS."""
    echo = EchoCache(layers, EchoConfig(kv_dtype=kv_dtype), offload=offload)
    context = drive(echo, grid, layers, cfg.num_heads, cfg.head_dim, dtype)
    placed = echo.nbytes_by_place()
    scale = MODEL_LAYERS / layers
    out = {"gpu": round((placed["storage"] + context) * scale) + placed["staging"],
           "storage": round(placed["storage"] * scale), "context": round(context * scale),
           "staging": placed["staging"], "host": round(placed["host"] * scale),
           "pool": round(echo.pool.nbytes() * scale), "scenes": len(echo.pool)}
    echo.release()
    return out


def measure(height: int, width: int, layers: int = 1, dtype: torch.dtype = torch.bfloat16) -> dict[str, Any]:
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=layers)
    grid = (height // 16, width // 16)
    scale = MODEL_LAYERS / layers
    full = preset_with("wan2.1-t2v-1.3b")
    rolling = RollingCache(layers, window_frames=ROLLING_WINDOW_FRAMES, sink_frames=ROLLING_SINK_FRAMES)
    rolling_context = drive(rolling, grid, layers, cfg.num_heads, cfg.head_dim, dtype)
    window = round(rolling.nbytes() * scale)
    rolling.release()
    off = _echo(layers, grid, cfg, dtype, "cpu")
    direct = _echo(layers, grid, cfg, dtype, None)
    fp8 = _echo(layers, grid, cfg, dtype, "cpu", FP8)
    scenes = off["scenes"]
    b = policy_budget(full, height, width, 3, "echo", kv_dtype=dtype)
    bd = policy_budget(full, height, width, 3, "echo", kv_dtype=dtype, offload=False)
    br = policy_budget(full, height, width, 3, "rolling", kv_dtype=dtype)
    bf = policy_budget(full, height, width, 3, EchoConfig(kv_dtype=FP8), kv_dtype=dtype)
    row = {
        "size": f"{width}x{height}", "tokens_per_frame": grid[0] * grid[1],
        "window_bytes": window,
        "rolling_gpu_bytes": window + round(rolling_context * scale),
        "echo_gpu_bytes": off["gpu"],
        "echo_host_bytes": off["host"] + off["pool"],
        "echo_host_storage_bytes": off["host"],
        "pool_bytes_per_scene": round(off["pool"] / max(scenes, 1)),
        "pool_scenes": scenes,
        "echo_context_bytes": off["context"], "echo_staging_bytes": off["staging"],
        "echo_unoffloaded_gpu_bytes": direct["gpu"],
        "echo_fp8_gpu_bytes": fp8["gpu"], "echo_fp8_host_storage_bytes": fp8["host"],
        "echo_fp8_over_echo": round(fp8["gpu"] / off["gpu"], 4),
        "formula": {
            "window_bytes": br.window_bytes, "rolling_gpu_bytes": br.device_bytes,
            "echo_gpu_bytes": b.device_bytes - b.gpu["compressed_index"],  # int64 origins: not in nbytes
            "echo_host_bytes": b.host_bytes(scenes), "echo_host_storage_bytes": b.host_storage_bytes,
            "pool_bytes_per_scene": b.pool_bytes_per_scene, "echo_host_max_bytes": b.host_bytes(),
            "echo_unoffloaded_gpu_bytes": bd.device_bytes - bd.gpu["compressed_index"],
            "echo_fp8_gpu_bytes": bf.device_bytes - bf.gpu["compressed_index"],
            "echo_fp8_host_storage_bytes": bf.host_storage_bytes,
            "echo_gpu_components": {**b.gpu, **{f"context:{k}": v for k, v in b.context.items()}},
            "echo_host_components": b.host, "pool_components": b.pool,
            "weights_bytes_bf16": b.weights_bytes, "activation_bytes": b.activation_bytes,
        },
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object (totals for 30 layers)")
    ap.add_argument("--layers", type=int, default=2, help="layers instantiated (scaled to 30; 2 fill both staging "
                    "buffers)")
    args = ap.parse_args()
    rows = [measure(480, 832, args.layers), measure(832, 480, args.layers)]
    if args.json:
        first = rows[0]
        out = {k: first[k] for k in ("window_bytes", "echo_gpu_bytes", "echo_host_bytes", "pool_bytes_per_scene",
                                     "echo_fp8_gpu_bytes", "pool_scenes", "tokens_per_frame", "rolling_gpu_bytes",
                                     "echo_host_storage_bytes", "echo_context_bytes", "echo_staging_bytes",
                                     "echo_unoffloaded_gpu_bytes", "echo_fp8_over_echo")}
        out.update(layers=MODEL_LAYERS, dtype="bfloat16", measured_layers=args.layers, sizes=rows,
                   echo_gpu_over_window=round(first["echo_gpu_bytes"] / first["window_bytes"], 4))
        print(json.dumps(out))
        return
    print(f"# Wan2.1-T2V-1.3B, {MODEL_LAYERS} layers (measured on {args.layers}, scaled), bf16 K/V, "
          "after 3 scenes (hard cut, recall); GPU = everything on the device during a chunk")
    print(f"{'policy':<22}{'size':<9}{'GPU (measured)':>16}{'GPU (formula)':>16}{'diff':>8}{'x window':>10}"
          f"{'host':>12}{'pool/scene':>13}")
    for r in rows:
        f = r["formula"]
        for name, gpu, fgpu, host, per in (
                ("rolling", r["rolling_gpu_bytes"], f["rolling_gpu_bytes"], 0, 0),
                ("echo (offloaded)", r["echo_gpu_bytes"], f["echo_gpu_bytes"], r["echo_host_storage_bytes"],
                 r["pool_bytes_per_scene"]),
                ("echo (not offloaded)", r["echo_unoffloaded_gpu_bytes"], f["echo_unoffloaded_gpu_bytes"], 0,
                 r["pool_bytes_per_scene"]),
                ("echo + fp8 KV", r["echo_fp8_gpu_bytes"], f["echo_fp8_gpu_bytes"], r["echo_fp8_host_storage_bytes"],
                 r["pool_bytes_per_scene"])):
            diff = f"{100 * (fgpu - gpu) / gpu:+.2f}%"
            print(f"{name:<22}{r['size']:<9}{human(gpu):>16}{human(fgpu):>16}{diff:>8}"
                  f"{gpu / r['window_bytes']:>10.2f}{human(host):>12}{human(per):>13}")
    f = rows[0]["formula"]
    print("echo on the device (formula, 30 layers): "
          + ", ".join(f"{k} {human(v)}" for k, v in f["echo_gpu_components"].items()))
    print("echo on the host (formula, 30 layers): "
          + ", ".join(f"{k} {human(v)}" for k, v in f["echo_host_components"].items()))


if __name__ == "__main__":
    main()
