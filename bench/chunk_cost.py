"""Per-chunk wall time and cache bytes over a long run: is per-chunk cost flat once the window is full?

Runs the Wan2.1-T2V-1.3B block geometry (dim 1536, 12 heads x 128, FFN 8960) at a reduced layer count and a
reduced resolution so it fits a CPU, with random weights and a chosen cache policy. Prints one line per chunk
and the ratio of the mean time of the last 10 chunks to that of chunks 10-20 (1.0 = flat).

    python bench/chunk_cost.py --chunks 40 --layers 2 --memory rolling
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
from echo_core.run import POLICY_NAMES, RunInputs, start_run  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.timeline import Timeline  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=40)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--height", type=int, default=128, help="pixels; latent is /8, tokens /16")
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--memory", choices=POLICY_NAMES, default="rolling")
    ap.add_argument("--steps", default="1000,750,500,250")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = ap.parse_args()
    if args.chunks < 30:
        ap.error("--chunks must be >= 30 to compare chunks 10-20 with the last 10")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=args.layers)
    torch.manual_seed(0)
    model = CausalWanModel(cfg).eval()
    context = [torch.randn(1, 64, cfg.text_dim) * 0.1]
    sampler = SamplerConfig(denoising_steps=tuple(float(s) for s in args.steps.split(",")))
    lat = (cfg.in_dim, args.height // 8, args.width // 8)
    tokens = (lat[1] // 2) * (lat[2] // 2)
    print(f"# 1.3B block geometry, {args.layers} layers, {tokens} tokens/frame, policy {args.memory}, "
          f"{len(sampler.denoising_steps)} steps + commit, torch threads {torch.get_num_threads()}")
    print("chunk  wall_s  cache_tokens  cache_MB")
    times = []
    with torch.no_grad():
        for res in start_run(model, args.memory, RunInputs(Timeline.single(args.chunks), tuple(context), lat,
                                                           sampler=sampler)):
            times.append(res.report["wall_s"])
            print(f"{res.index + 1:5d}  {times[-1]:6.3f}  {res.report['cache_tokens']:12d}  "
                  f"{res.report['cache_bytes'] / 2**20:8.2f}")
    early = statistics.mean(times[9:20])
    late = statistics.mean(times[-10:])
    print(f"mean wall chunks 10-20: {early:.3f}s  last 10: {late:.3f}s  ratio last/10-20: {late / early:.3f}")
    print("per-chunk cost is flat once the window is full" if abs(late / early - 1) < 0.1
          else "per-chunk cost is NOT flat (ratio off by more than 10%)")


if __name__ == "__main__":
    main()
