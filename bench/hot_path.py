"""Per-chunk cost of the cache policies against the floor, measured side by side in one process.

The floor is the same DiT forward at the same token geometry attending to a plain preallocated K/V tensor of the
window's length: no policy, no re-rotation of the context (only the chunk's own new keys are rotated, which any
implementation must do), no weights. Rolling (Self-Forcing's window) and Echo-Forcing run the full schedule
(4 denoising calls + the commit call) on the real Wan2.1-1.3B token geometry (1560 tokens per frame at 832x480,
dim 1536) with 1-2 layers and random weights, in fp32 on the CPU by default. The three advance one chunk each in
turn, so they see the same machine conditions. Their windows are filled first with start latents (commit passes
only), so every measured chunk is a steady-state chunk; the first measured chunk is a warm-up and not counted.

    python bench/hot_path.py            # table
    python bench/hot_path.py --json     # one JSON object: floor_s, rolling_s, echo_s (median s per chunk), ratios
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Iterator

import torch

for _path in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:  # appended, not prepended: never shadow a host's top-level modules (ComfyUI's nodes)
        sys.path.append(_path)

from echo_core.cache.base import CachePolicy  # noqa: E402
from echo_core.model.attention_io import AttentionInputs, KVSpan  # noqa: E402
from echo_core.model.config import preset_with  # noqa: E402
from echo_core.model.rope import grid_positions  # noqa: E402
from echo_core.model.wan import CausalWanModel  # noqa: E402
from echo_core.run import RunInputs, start_run  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.timeline import Timeline  # noqa: E402

WINDOW = 21  # latent frames the policies attend to once full (official local_attn_size)


class FloorCache(CachePolicy):
    """A preallocated [B, H, WINDOW*S, D] context whose last chunk of rows each call overwrites with its own k/v:
    the attention a chunk needs, with nothing kept, moved, re-rotated or weighted."""

    def __init__(self, num_layers: int, seed: int = 0):
        super().__init__(num_layers)
        self.seed = seed
        self._kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self._pos: tuple[torch.Tensor, torch.Tensor] | None = None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> AttentionInputs:
        chunk = self._require_chunk()
        s, c = chunk.tokens_per_frame, chunk.num_frames
        if self._kv[layer] is None:
            gen = torch.Generator().manual_seed(self.seed + layer)
            shape = (k.shape[0], k.shape[1], WINDOW * s, k.shape[3])
            self._kv[layer] = (torch.randn(shape, generator=gen).to(k), torch.randn(shape, generator=gen).to(v))
        kbuf, vbuf = self._kv[layer]  # type: ignore[misc]
        a = (WINDOW - c) * s
        kbuf[:, :, a:], vbuf[:, :, a:] = k, v
        if self._pos is None:
            rows, cols = chunk.grid
            k_pos = grid_positions(range(WINDOW), rows, cols, device=k.device)
            self._pos = (k_pos, k_pos[a:])
        # One context for the whole run: rotated once, then only the chunk's own rows on every call.
        return AttentionInputs(self._pos[1], [KVSpan(kbuf, vbuf, self._pos[0])], context_id="floor",
                               own_rows=((a, WINDOW * s),), memo=self._memos[layer])

    def token_count(self, layer: int = 0) -> int:
        return 0 if self._kv[layer] is None else self._kv[layer][0].shape[2]  # type: ignore[index]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self._kv if kv is not None for t in kv)

    def release(self) -> None:
        self.release_context()
        self._kv = [None] * self.num_layers


def measure(layers: int, height: int, width: int, chunks: int, steps: int, dtype: torch.dtype,
            device: str) -> dict[str, Any]:
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=layers)
    torch.manual_seed(0)
    model = CausalWanModel(cfg).to(device=device, dtype=dtype).eval()
    context = (torch.randn(1, 64, cfg.text_dim) * 0.1,)
    sampler = SamplerConfig(denoising_steps=tuple(1000.0 * (steps - i) / steps for i in range(steps)))
    latent = (cfg.in_dim, height // 8, width // 8)
    tokens = (latent[1] // 2) * (latent[2] // 2)
    start = torch.randn(1, cfg.in_dim, WINDOW - sampler.frames_per_chunk, *latent[1:],
                        generator=torch.Generator().manual_seed(1))
    runs: dict[str, Iterator[Any]] = {
        "floor": iter(start_run(model, FloorCache(layers), RunInputs(Timeline.single(chunks), context, latent,
                                                                      sampler=sampler, device=device))),
    }
    for name in ("rolling", "echo"):
        inputs = RunInputs(Timeline.single(chunks), context, latent, sampler=sampler, device=device,
                           start_latents=start.to(device))
        runs[name] = iter(start_run(model, name, inputs))
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(chunks):
            for name, run in runs.items():
                report = next(run).report
                if device != "cpu":
                    torch.cuda.synchronize()
                times[name].append(report["wall_s"])
    steady = {name: t[1:] for name, t in times.items()}  # chunk 0 allocates buffers and warms up
    med = {name: statistics.median(t) for name, t in steady.items()}
    return {
        "floor_s": med["floor"], "rolling_s": med["rolling"], "echo_s": med["echo"],
        "rolling_ratio": med["rolling"] / med["floor"], "echo_ratio": med["echo"] / med["floor"],
        "echo_fp8_s": None,  # the fp8 KV cache does not exist in this version
        "per_chunk_s": times,
        "settings": {"layers": layers, "height": height, "width": width, "tokens_per_frame": tokens,
                     "window_frames": WINDOW, "chunks": chunks, "measured_chunks": chunks - 1,
                     "calls_per_chunk": steps + 1, "dtype": str(dtype).removeprefix("torch."), "device": device,
                     "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1, choices=[1, 2])
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--chunks", type=int, default=4, help="chunks per policy; the first is a warm-up (>= 2)")
    ap.add_argument("--steps", type=int, default=4, help="denoising calls per chunk (plus the commit call)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args(argv)
    if args.chunks < 2:
        ap.error("--chunks must be >= 2 (the first chunk is a warm-up)")
    if args.height % 16 or args.width % 16 or args.height <= 0 or args.width <= 0:
        ap.error("--height and --width must be positive multiples of 16")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    result = measure(args.layers, args.height, args.width, args.chunks, args.steps, dtype, args.device)
    if args.json:
        print(json.dumps(result))
        return result
    st = result["settings"]
    print(f"# 1.3B token geometry ({st['tokens_per_frame']} tokens/frame, {args.width}x{args.height}), "
          f"{args.layers} layer(s), {args.steps} steps + commit, {args.dtype} on {args.device}, "
          f"{st['torch_threads']} threads; median of {st['measured_chunks']} steady-state chunks")
    print("policy    s/chunk   x floor")
    for name in ("floor", "rolling", "echo"):
        s = result[f"{name}_s"]
        print(f"{name:8s}  {s:7.3f}   {s / result['floor_s']:.3f}")
    print("echo+fp8  n/a (no fp8 KV cache in this version)")
    return result


if __name__ == "__main__":
    main()
