"""Per-chunk cost of the Echo-Forcing cache policy against Self-Forcing's rolling window, measured in one run.

Same model, same seed, same inputs; the two runs advance chunk by chunk in alternation so that both see the
same machine conditions. Wan2.1-T2V-1.3B block geometry (dim 1536, 12 heads x 128, 1560 tokens per latent frame
at 480x832, 21-frame window) at reduced depth. Steady state = chunks after the window is full (chunk index >= 7
with 3 frames per chunk). Prints per-chunk times and the steady-state ratio echo / rolling.

    python bench/memory_overhead.py --layers 1 --chunks 11 --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

for _path in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:  # appended, not prepended: never shadow a host's top-level modules (ComfyUI's nodes)
        sys.path.append(_path)

from echo_core.model.config import preset_with  # noqa: E402
from echo_core.model.wan import CausalWanModel  # noqa: E402
from echo_core.run import RunInputs, start_run  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.timeline import Timeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--chunks", type=int, default=11, help="total chunks; the window is full from chunk 8 on")
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--steps", default="1000", help="denoising timesteps (each chunk adds one commit pass)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=args.layers)
    torch.manual_seed(0)
    model = CausalWanModel(cfg).to(device=args.device, dtype=dtype).eval()
    context = [torch.randn(1, 64, cfg.text_dim) * 0.1]
    sampler = SamplerConfig(denoising_steps=tuple(float(s) for s in args.steps.split(",")))
    lat = (cfg.in_dim, args.height // 8, args.width // 8)
    tokens = (lat[1] // 2) * (lat[2] // 2)
    inputs = RunInputs(Timeline.single(args.chunks), tuple(context), lat, sampler=sampler, device=args.device)
    runs = {name: start_run(model, name, inputs) for name in ("rolling", "echo")}
    print(f"# 1.3B block geometry, {args.layers} layer(s), {tokens} tokens/frame, {len(sampler.denoising_steps)} "
          f"step(s) + commit per chunk, {args.dtype} on {args.device}, torch threads {torch.get_num_threads()}")
    print("chunk  rolling_s  echo_s  echo_cache_tokens  rolling_cache_tokens")
    times: dict[str, list[float]] = {"rolling": [], "echo": []}
    tokens_seen: dict[str, int] = {}
    with torch.inference_mode():
        for chunk in range(args.chunks):
            for name, gen in runs.items():
                res = next(gen)
                if args.device != "cpu":
                    torch.cuda.synchronize()
                times[name].append(res.report["wall_s"])
                tokens_seen[name] = res.report["cache_tokens"]
            print(f"{chunk + 1:5d}  {times['rolling'][-1]:9.3f}  {times['echo'][-1]:6.3f}  "
                  f"{tokens_seen['echo']:17d}  {tokens_seen['rolling']:20d}")
    steady = slice(7, None)
    roll, echo = statistics.mean(times["rolling"][steady]), statistics.mean(times["echo"][steady])
    print(f"steady state (chunks 8..{args.chunks}): rolling {roll:.3f}s  echo {echo:.3f}s  "
          f"ratio echo/rolling {echo / roll:.3f}  overhead {100 * (echo / roll - 1):+.1f}%")


if __name__ == "__main__":
    main()
