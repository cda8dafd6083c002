"""One-command GPU check: speed, memory, attention kernel and numerics of the Wan2.1-T2V-1.3B architecture.

    python bench/gpu_check.py                    # one GPU, under 8 minutes: bench/results/gpu_<device>.md + .json
    python bench/gpu_check.py --device cpu --layers 1 --chunks 3 --height 64 --width 64 --out-dir /tmp/g

The 1.3B architecture (30 layers by default) with seeded random weights in bf16 at 832x480 runs 4 denoising
steps + 1 commit call per chunk, `--chunks` chunks for each row of the policy table (rolling, Echo, Echo with an
fp8 K/V cache) on one timeline with a smooth transition, a hard cut and a recall. Per row: video frames per
second, time to the first chunk, peak VRAM (torch.cuda.max_memory_allocated, weights included), the cache's
peak size and the attention kernel that really served the self-attention (the dispatch of
echo_core.model.attention_backend, and for SDPA the aten kernel seen by the profiler; on CUDA a fall-back to
SDPA's math kernel is a failure). Then the numerics on the same device: chunked cache == block-causal full
forward within a stated tolerance, and parity with ComfyUI's own WanModel on one chunk when the host is
importable. The whole check runs the same code on CPU (tests/test_gpu_check.py), so it cannot rot.

Conventions: a chunk of 3 latent frames counts 12 video frames (4 per latent frame: the Wan VAE's steady rate;
a whole video of n latent frames decodes to 4n-3 frames). FPS = video frames / seconds from the start of the run
to the last chunk's latents (CUDA synchronised after every chunk), warm-up excluded; "steady FPS" leaves the first
chunk out. Time to first chunk: from the call that opens the run to the first chunk's latents.
Exit status 1 when a failure is recorded (the files are written first); targets missed are reported, not failed.

On a GPU machine: `python bench/gpu_check.py` from the repository root (add `ECHO_COMFY_HOST=<ComfyUI root>` for
the parity check; without a host it is reported as skipped), then commit the two files under bench/results/ and
quote their figures. It needs torch (>= 2.3 for the kernel probe), numpy and safetensors; nothing is downloaded.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # the whole check's clock starts before the imports

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
for _path in (str(REPO), str(Path(__file__).resolve().parent)):
    if _path not in sys.path:  # appended, not prepended: never shadow a host's top-level modules (ComfyUI's nodes)
        sys.path.append(_path)

from gpu_check_numerics import check_chunked_vs_full, check_comfy_parity  # noqa: E402
from gpu_check_report import device_info, results_stem, write_results  # noqa: E402

from echo_core.model import attention_backend  # noqa: E402
from echo_core.model.config import preset_with  # noqa: E402
from echo_core.model.wan import CausalWanModel  # noqa: E402
from echo_core.run import RunInputs, echo_config_for, start_run  # noqa: E402
from echo_core.sampler import SamplerConfig  # noqa: E402
from echo_core.text_standin import standin_embedding  # noqa: E402
from echo_core.timeline import Timeline, parse_timeline  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
VIDEO_FRAMES_PER_LATENT = 4
TARGET_FPS = 16.0  # real time at Wan's 16 fps
TARGET_ECHO_VS_ROLLING = 0.9  # Echo within 10% of rolling
TARGET_TOTAL_S = 480.0
# Scene prompts: the fourth scene repeats the first, so the recall routes back to it.
PROMPTS = ("a red fox runs through deep snow at dawn", "the fox walks into a quiet snowy pine forest",
           "a neon-lit city street at night in the rain")
# aten ops under an SDPA call, as the profiler names them -> the kernel (first match wins).
SDPA_OPS = (("_scaled_dot_product_flash_attention_for_cpu", "flash(cpu)"),
            ("_scaled_dot_product_flash_attention", "flash"),
            ("_scaled_dot_product_efficient_attention", "efficient"),
            ("_scaled_dot_product_cudnn_attention", "cudnn"),
            ("_scaled_dot_product_attention_math", "math"),
            ("_scaled_dot_product_fused_attention_overrideable", "overrideable"))


# --------------------------------------------------------------------------------------------- policies
@dataclass(frozen=True)
class PolicyRow:
    """One row of the table: `build(frames_per_chunk)` -> (policy for start_run, None) or (None, why not)."""

    name: str
    description: str
    build: Callable[[int], tuple[Any, str | None]]


def _echo_fp8(fpc: int) -> tuple[Any, str | None]:
    """Echo with an fp8 K/V cache, when the installed code has such an option (a `kv_dtype` field on EchoConfig
    or one of its sections); feature-detected at run time, never faked."""
    import dataclasses

    from echo_core import config as config_module

    base = echo_config_for(fpc)
    holders = [("", base)] + [(f.name, getattr(base, f.name)) for f in dataclasses.fields(base)]
    holders = [(path, obj) for path, obj in holders if dataclasses.is_dataclass(obj)
               and "kv_dtype" in {f.name for f in dataclasses.fields(obj)}]
    if not holders:
        return None, "not available in this version (no kv_dtype option on EchoConfig)"
    declared = [str(v) for mod in (config_module, _maybe_module("echo_core.cache.echo"))
                for v in getattr(mod, "KV_DTYPES", ())]
    candidates = [v for v in declared if "8" in v] or ["fp8", "fp8_e4m3fn", "float8_e4m3fn", "e4m3fn"]
    path, holder = holders[0]
    tried = []
    for value in candidates:
        try:
            changed = dataclasses.replace(holder, kv_dtype=value)
        except Exception as e:  # the option exists but does not take this spelling: try the next
            tried.append(f"{value!r}: {e}")
            continue
        policy = changed if not path else dataclasses.replace(base, **{path: changed})
        refusal = _echo_cache_refuses(policy)
        if refusal:  # the setting exists (rolling stores fp8) but the echo cache does not implement it yet
            return None, f"not available in this version ({refusal})"
        return policy, None
    return None, "not available in this version (kv_dtype accepts none of " + "; ".join(tried) + ")"


def _echo_cache_refuses(policy: Any) -> str | None:
    """Why the echo cache would refuse this EchoConfig's kv_dtype (echo_core.run.check_echo_kv_dtype), or None."""
    from echo_core.config import EchoConfig

    check = getattr(_maybe_module("echo_core.run"), "check_echo_kv_dtype", None)
    if check is None or not isinstance(policy, EchoConfig):
        return None
    try:
        check(policy.kv_dtype)
    except ValueError as e:
        return str(e)
    return None


def _maybe_module(name: str) -> Any:
    try:
        return __import__(name, fromlist=["_"])
    except ImportError:
        return None


POLICY_TABLE = (
    PolicyRow("rolling", "Self-Forcing rolling window (sink 1 + 21 frames), the baseline",
              lambda fpc: ("rolling", None)),
    PolicyRow("echo", "Echo-Forcing, official settings (smooth, hard cut and recall on this timeline)",
              lambda fpc: (echo_config_for(fpc), None)),
    PolicyRow("echo+fp8kv", "Echo-Forcing with its K/V cache stored in fp8", _echo_fp8),
)


def echo_timeline_text(chunks: int, fpc: int = 3, fps: float = 16, temporal: int = 4) -> str:
    """A timeline of `chunks` chunks: smooth -> hard cut -> recall (scene 4 = scene 1). Three chunks hold only the
    hard cut and the recall (a smooth transition needs a fourth scene)."""
    seconds = fpc * temporal / fps  # one chunk
    if chunks >= 4:
        prompts, markers = PROMPTS + PROMPTS[:1], ("", "#", "@", "")
    else:
        prompts, markers = (PROMPTS[0], PROMPTS[2], PROMPTS[0]), ("#", "@", "")
    n = len(prompts)
    sizes = [chunks // n + (i < chunks % n) for i in range(n)]
    return " | ".join(f"{p} [{s * seconds:g}s{m}]" for p, s, m in zip(prompts, sizes, markers))


# --------------------------------------------------------------------------------------------- measuring
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def sdpa_kernels(events: Any) -> dict[str, int]:
    """Kernel of every SDPA self-attention call in a profile (calls marked by attention_backend.SDPA_RANGE)."""
    counts: Counter = Counter()
    for ev in events:
        if ev.name != attention_backend.SDPA_RANGE:
            continue
        kind, stack = None, list(ev.cpu_children)
        while stack and kind is None:
            e = stack.pop(0)
            kind = next((k for needle, k in SDPA_OPS if needle in e.name), None)
            stack.extend(e.cpu_children)
        counts[kind or "unknown"] += 1
    return dict(counts)


def judge_attention(dispatch: dict[str, int], kernels: dict[str, int], device: torch.device) -> dict[str, Any]:
    parts = [f"{k}" for k in ("sage", "flash") if dispatch.get(k)]
    if dispatch.get("sdpa"):
        parts.append("sdpa:" + ("+".join(sorted(kernels)) or "unknown"))
    label = ", ".join(parts) or "none"
    if device.type != "cuda":
        return {"dispatch": dispatch, "sdpa_kernels": kernels, "label": label, "ok": None,
                "note": "CPU: SDPA's CPU kernel is expected here and not judged"}
    bad = sorted(k for k in kernels if k in ("math", "unknown", "overrideable"))
    ok = bool(parts) and not bad
    note = "fused kernel" if ok else f"self-attention fell back to {', '.join(bad) or 'nothing'}"
    return {"dispatch": dispatch, "sdpa_kernels": kernels, "label": label, "ok": ok, "note": note}


def probe_attention(model: Any, policy: Any, inputs: RunInputs, device: torch.device) -> dict[str, Any]:
    """Run `inputs` (a short warm-up) under the profiler: which kernel served each self-attention call."""
    from torch.profiler import ProfilerActivity, profile

    with attention_backend.recording() as used, profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in start_run(model, policy, inputs):
            pass
        sync(device)
    return judge_attention(dict(used), sdpa_kernels(prof.events()), device)


def measure(model: Any, policy: Any, inputs: RunInputs, device: torch.device) -> dict[str, Any]:
    release(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    run = start_run(model, policy, inputs)
    stamps, finite = [], True
    with attention_backend.recording() as used:
        for res in run:
            sync(device)
            stamps.append(time.perf_counter() - t0)
            finite = finite and bool(torch.isfinite(res.latents).all())
    report = run.report()
    n = len(stamps)
    frames_per_chunk = inputs.timeline.frames_per_chunk * VIDEO_FRAMES_PER_LATENT
    total = stamps[-1]
    steady = (n - 1) * frames_per_chunk / (stamps[-1] - stamps[0]) if n > 1 else None
    chunk_s = [stamps[0]] + [b - a for a, b in zip(stamps, stamps[1:])]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {
        "chunks": n, "video_frames": n * frames_per_chunk, "fps": n * frames_per_chunk / total,
        "steady_fps": steady, "first_chunk_s": stamps[0], "total_s": total,
        "median_chunk_s": sorted(chunk_s)[n // 2], "chunk_s": [round(s, 4) for s in chunk_s],
        "peak_vram_bytes": peak, "peak_cache_mib": report["peak_cache_mb"],
        "peak_cache_tokens": report["peak_cache_tokens"], "finite": finite, "measured_dispatch": dict(used),
        "scenes": [{k: s.get(k) for k in ("transition", "recall_source", "chunks")} for s in report["scenes"]],
    }


EMPTY_ROW = {k: None for k in ("error", "chunks", "video_frames", "fps", "steady_fps", "first_chunk_s", "total_s",
                               "median_chunk_s", "chunk_s", "peak_vram_bytes", "peak_cache_mib", "peak_cache_tokens",
                               "finite", "measured_dispatch", "scenes", "attention")}


def bench_row(row: PolicyRow, model: Any, inputs: RunInputs, warmup: RunInputs, device: torch.device) -> dict:
    out: dict[str, Any] = {"name": row.name, "description": row.description, "available": True, "reason": None,
                           **EMPTY_ROW}
    policy, reason = row.build(inputs.timeline.frames_per_chunk)
    if policy is None:
        out.update(available=False, reason=reason)
        print(f"[gpu_check] {row.name}: {reason}", flush=True)
        return out
    try:
        out["attention"] = probe_attention(model, policy, warmup, device)
        out.update(measure(model, policy, inputs, device))
        print(f"[gpu_check] {row.name}: {out['fps']:.2f} FPS, first chunk {out['first_chunk_s']:.2f} s, "
              f"attention {out['attention']['label']}", flush=True)
    except Exception as e:  # an out-of-memory or a policy error: recorded, the other rows still run
        out["error"] = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        release(device)
    return out


def sdpa_usable(device: torch.device, dtype: torch.dtype, heads: int, head_dim: int, lq: int, lk: int
                ) -> dict[str, str]:
    """Which SDPA kernels accept the self-attention's real shapes and dtype (each tried alone)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return {"error": "torch.nn.attention.sdpa_kernel is missing in this torch"}
    q = torch.randn(1, heads, lq, head_dim, device=device, dtype=dtype)
    k = torch.randn(1, heads, lk, head_dim, device=device, dtype=dtype)
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        key = name.split("_")[0].lower()
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            out[key] = "not in this torch"
            continue
        with warnings.catch_warnings(record=True) as said:  # torch warns why each kernel declines
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    torch.nn.functional.scaled_dot_product_attention(q, k, k)
                sync(device)
                out[key] = "ok"
            except RuntimeError as e:
                why = [str(w.message).strip() for w in said] + [str(e).strip()]
                out[key] = "no: " + " / ".join(w.splitlines()[0][:200] for w in why if w)
    return out


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    ap.add_argument("--layers", type=int, default=30, help="transformer blocks of the 1.3B architecture (30)")
    ap.add_argument("--chunks", type=int, default=20, help="chunks per policy (>= 3; 20)")
    ap.add_argument("--height", type=int, default=480, help="pixels, a multiple of 16 (480)")
    ap.add_argument("--width", type=int, default=832, help="pixels, a multiple of 16 (832)")
    ap.add_argument("--steps", default="1000,750,500,250", help="denoising timesteps; a commit call follows")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--attention", choices=attention_backend.BACKENDS, default="auto",
                    help="self-attention kernel (SamplerConfig.attention)")
    ap.add_argument("--policies", default=",".join(r.name for r in POLICY_TABLE),
                    help="rows of the policy table to run, comma separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--warmup-chunks", type=int, default=1, help="chunks of the profiled warm-up run per policy")
    ap.add_argument("--numerics-layers", type=int, default=2, help="layers of the numerics checks (<= --layers)")
    ap.add_argument("--numerics-chunks", type=int, default=3, help="chunks of the chunked-vs-full check")
    ap.add_argument("--comfy-host", type=Path, default=None,
                    help="ComfyUI root for the parity check (default $ECHO_COMFY_HOST or .cache/comfyui-0.3.75)")
    ap.add_argument("--no-comfy", action="store_true", help="skip the ComfyUI parity check")
    ap.add_argument("--out-dir", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    names = [r.name for r in POLICY_TABLE]
    args.policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not args.policies or any(p not in names for p in args.policies):
        ap.error(f"--policies: choose from {', '.join(names)}")
    if args.chunks < 3:
        ap.error("--chunks must be >= 3 (the timeline holds a hard cut and a recall)")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    if args.layers < 1 or args.numerics_layers < 1 or args.numerics_chunks < 2 or args.warmup_chunks < 1:
        ap.error("--layers, --numerics-layers, --warmup-chunks must be >= 1 and --numerics-chunks >= 2")
    if args.height % 16 or args.width % 16:
        ap.error("--height and --width must be multiples of 16 (VAE 8 x patch 2)")
    try:
        args.steps = tuple(float(s) for s in args.steps.split(","))
    except ValueError:
        ap.error(f"--steps must be comma-separated numbers, got {args.steps!r}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError as e:
        ap.error(f"--device: {e}")
    if args.device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error("CUDA is not available here; pass --device cpu to run the check on the CPU")
        if args.device.index is None:  # torch.cuda.set_device and friends want an index
            args.device = torch.device("cuda", torch.cuda.current_device())
    elif args.device.type != "cpu":
        ap.error(f"--device must be cuda, cuda:N or cpu, got {args.device}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, dtype = args.device, DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = preset_with("wan2.1-t2v-1.3b", num_layers=args.layers)
    latent = (cfg.in_dim, args.height // 8, args.width // 8)
    tokens = cfg.tokens_per_frame(latent[1], latent[2])
    sampler = SamplerConfig(denoising_steps=args.steps, attention=args.attention)
    fpc = sampler.frames_per_chunk
    text = echo_timeline_text(args.chunks, fpc)
    timeline = parse_timeline(text, frames_per_chunk=fpc)
    assert timeline.total_chunks == args.chunks, (timeline.total_chunks, text)
    contexts = tuple(standin_embedding(s.prompt, cfg.text_dim) for s in timeline.scenes)
    inputs = RunInputs(timeline, contexts, latent, seed=args.seed, sampler=sampler, routing_features=contexts,
                       device=device)
    warmup = RunInputs(Timeline.single(args.warmup_chunks, PROMPTS[0], frames_per_chunk=fpc), contexts[:1], latent,
                       seed=args.seed + 1, sampler=sampler, device=device)
    settings = {
        "model": "wan2.1-t2v-1.3b architecture, seeded random weights", "layers": args.layers,
        "dtype": args.dtype, "height": args.height, "width": args.width, "latent_shape": list(latent),
        "tokens_per_frame": tokens, "chunks": args.chunks, "frames_per_chunk": fpc,
        "video_frames_per_chunk": fpc * VIDEO_FRAMES_PER_LATENT, "denoising_steps": list(args.steps),
        "model_calls_per_chunk": len(args.steps) + 1, "attention": args.attention, "seed": args.seed,
        "timeline": text, "transitions": [t.mode.value for t in timeline.transitions],
        "warmup_chunks": args.warmup_chunks, "numerics_layers": min(args.numerics_layers, args.layers),
        "numerics_chunks": args.numerics_chunks, "policies": args.policies,
        "fps_convention": f"{VIDEO_FRAMES_PER_LATENT} video frames per latent frame; from run start to the last "
                          "chunk's latents, CUDA synchronised per chunk, warm-up excluded",
    }
    print(f"[gpu_check] {device_info(device)['name']}: {args.layers} layers, {args.width}x{args.height} "
          f"({tokens} tokens/frame), {args.dtype}, {args.chunks} chunks x {len(args.policies)} policies", flush=True)

    torch.manual_seed(args.seed)
    with torch.device(device):
        model = CausalWanModel(cfg).eval().to(dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = [bench_row(r, model, inputs, warmup, device) for r in POLICY_TABLE if r.name in args.policies]
    del model
    release(device)
    usable = sdpa_usable(device, dtype, cfg.num_heads, cfg.head_dim, fpc * tokens, 22 * tokens)
    numerics_layers = min(args.numerics_layers, args.layers)
    numerics = {"chunked_vs_full": check_chunked_vs_full(numerics_layers, args.numerics_chunks, latent, fpc, device,
                                                          dtype, args.seed, rows),
                "comfy_parity": check_comfy_parity(numerics_layers, latent, fpc, device, dtype, args.seed,
                                                   None if args.no_comfy else (args.comfy_host or "default"))}
    results = summarise(args, device, settings, weights, rows, usable, numerics, time.perf_counter() - STARTED)
    md, js = write_results(results, args.out_dir, results_stem(results["device"]["name"]))
    print(md.read_text(encoding="utf-8"))
    print(f"[gpu_check] wrote {md} and {js}")
    return 1 if results["failures"] else 0


def summarise(args: argparse.Namespace, device: torch.device, settings: dict, weights: int, rows: list[dict],
              usable: dict, numerics: dict, elapsed: float) -> dict[str, Any]:
    failures = []
    for r in rows:
        if r["error"]:
            failures.append(f"{r['name']}: {r['error']}")
        elif r["available"]:
            if r["attention"]["ok"] is False:
                failures.append(f"{r['name']}: attention {r['attention']['label']} ({r['attention']['note']})")
            if not r["finite"]:
                failures.append(f"{r['name']}: non-finite latents")
    for name, check in numerics.items():
        if check["status"] == "fail":
            failures.append(f"numerics {name}: {check['summary']}")
    by = {r["name"]: r for r in rows if r["fps"] is not None}
    targets = []
    if device.type == "cuda":
        echo, rolling = by.get("echo"), by.get("rolling")
        targets.append({"target": f"Echo >= {TARGET_FPS:g} video FPS", "value": echo and round(echo["fps"], 2),
                        "met": None if echo is None else echo["fps"] >= TARGET_FPS})
        ratio = echo and rolling and echo["fps"] / rolling["fps"]
        targets.append({"target": f"Echo FPS >= {TARGET_ECHO_VS_ROLLING:g} x rolling",
                        "value": ratio and round(ratio, 3),
                        "met": None if not ratio else ratio >= TARGET_ECHO_VS_ROLLING})
        targets.append({"target": f"whole check < {TARGET_TOTAL_S:g} s", "value": round(elapsed, 1),
                        "met": elapsed < TARGET_TOTAL_S})
    else:
        targets.append({"target": "speed targets", "value": None, "met": None, "note": "GPU only (not judged on CPU)"})
    return {"schema": 1, "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "command": "python bench/gpu_check.py " + " ".join(sys.argv[1:]), "device": device_info(device),
            "settings": settings, "weights_bytes": weights, "policies": rows, "sdpa_kernels_usable": usable,
            "numerics": numerics, "targets": targets, "failures": failures, "elapsed_s": round(elapsed, 2),
            "attention_kernels_installed": attention_backend.available()}


if __name__ == "__main__":
    sys.exit(main())
