"""The numerics half of bench/gpu_check.py, run on the device being checked and in its dtype.

1. Chunked cache == block-causal full forward: the causal model run chunk by chunk through a full cache against
   one forward over the whole sequence with the block-causal mask (tests/test_model_causal.py does it in fp32 on
   CPU at 1e-4). In low precision the two take different kernels and GEMM shapes, so the tolerance is relative
   (TOLERANCE). Dropping the mask must move the output by MASK_EFFECT_FACTOR times the tolerance or more, so a
   pass means something. When a benchmark row ran a kernel other than SDPA, the chunked forward under that kernel
   is also compared with SDPA's.
2. Parity with ComfyUI's own WanModel (same weights) on one chunk through the cache, when a host is importable.

The weights are random but "sharpened" so that attention matters: with Wan's default init the gates are tiny and
the attention nearly uniform, and dropping the mask moved the output by 0.3% (less than bf16's own error, 0.4%).
With gates ~N(0, 1) and the q/k RMSNorm weights at 3 (peaky attention, like trained weights), measured on CPU
against an fp32 reference at 8x8 and 16x16 tokens per frame: bf16 error rel RMS 1.4%, rel max 1.9%; fp16 0.7% /
1.2%; dropping the mask 38-41% rel RMS. The tolerances allow about twice the bf16 error (two low-precision paths
are compared with each other on the device).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from echo_core.cache.base import CallInfo, ChunkInfo
from echo_core.cache.rolling import full_cache
from echo_core.model import attention_backend
from echo_core.model.config import preset_with
from echo_core.model.wan import CausalWanModel, block_causal_mask
from echo_core.text_standin import standin_embedding

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a red fox runs through deep snow at dawn"
# Relative to the reference's largest magnitude (rel_max) and to its RMS (rel_rms).
# fp32 allows for TF32 convolutions (cuDNN's default) on CUDA.
TOLERANCE = {torch.bfloat16: {"rel_max": 6e-2, "rel_rms": 3e-2},
             torch.float16: {"rel_max": 3e-2, "rel_rms": 1.5e-2},
             torch.float32: {"rel_max": 2e-3, "rel_rms": 1e-3}}
SAGE_REL_RMS = 0.1  # SageAttention quantises Q and K to int8: only a loose bound against exact attention
MASK_EFFECT_FACTOR = 5  # dropping the mask must move the first chunk's output by >= 5x the rel_rms tolerance
GATE_STD, QK_NORM_WEIGHT = 1.0, 3.0  # the sharpened init (see above)


def _rel(a: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    d, ref = a.float() - ref.float(), ref.float()
    return {"rel_max": float(d.abs().max() / ref.abs().max()),
            "rel_rms": float(d.pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()),
            "max_abs": float(d.abs().max())}


def _model(layers: int, device: torch.device, dtype: torch.dtype, seed: int, perturb: bool = False
           ) -> CausalWanModel:
    """The 1.3B architecture with `layers` blocks and sharpened random weights; `perturb` also moves every
    parameter off its init (biases and norm weights off 0/1), so that a parity check sees each of them."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = CausalWanModel(preset_with("wan2.1-t2v-1.3b", num_layers=layers)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in model.blocks:
            block.modulation.copy_(torch.randn(block.modulation.shape, generator=gen) * GATE_STD)
            block.self_attn.norm_q.weight.fill_(QK_NORM_WEIGHT)
            block.self_attn.norm_k.weight.fill_(QK_NORM_WEIGHT)
        if perturb:
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(device) * 0.05)
    return model.to(dtype)


def _inputs(model: CausalWanModel, frames: int, latent: tuple[int, int, int], seed: int, device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, model.cfg.in_dim, frames, latent[1], latent[2], generator=gen)
    t = torch.rand(1, frames, generator=gen) * 1000
    return x.to(device), t.to(device), standin_embedding(PROMPT, model.cfg.text_dim).to(device)


def chunked_forward(model: CausalWanModel, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, fpc: int
                    ) -> torch.Tensor:
    """One call per chunk through a cache that keeps everything: the causal path of a run."""
    cache = full_cache(model.cfg.num_layers)
    text = model.encode_text(ctx)
    grid = (x.shape[3] // model.cfg.patch_size[1], x.shape[4] // model.cfg.patch_size[2])
    outs = []
    for i, f0 in enumerate(range(0, x.shape[2], fpc)):
        cache.begin_chunk(ChunkInfo(i, f0, fpc, grid))
        cache.begin_call(CallInfo(0, False))
        outs.append(model.forward_chunk(x[:, :, f0:f0 + fpc], t[:, f0:f0 + fpc], text, cache))
    cache.release()
    return torch.cat(outs, dim=2)


def _status(ok: bool) -> str:
    return "pass" if ok else "fail"


def check_chunked_vs_full(layers: int, chunks: int, latent: tuple[int, int, int], fpc: int, device: torch.device,
                          dtype: torch.dtype, seed: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    tol = TOLERANCE[dtype]
    out: dict[str, Any] = {"layers": layers, "chunks": chunks, "dtype": str(dtype).replace("torch.", ""),
                           "tolerance": tol, "mask_effect_factor": MASK_EFFECT_FACTOR}
    try:
        model = _model(layers, device, dtype, seed + 100)
        frames = chunks * fpc
        x, t, ctx = _inputs(model, frames, latent, seed + 101, device)
        tokens = model.cfg.tokens_per_frame(latent[1], latent[2])
        with torch.no_grad(), attention_backend.use("sdpa"):
            full = model.forward_sequence(x, t, ctx, attn_mask=block_causal_mask(frames, tokens, fpc, device=device))
            chunked = chunked_forward(model, x, t, ctx, fpc)
            bidir = model.forward_sequence(x[:, :, :2 * fpc], t[:, :2 * fpc], ctx)  # first chunk sees the second
        err = _rel(chunked, full)
        mask_effect = _rel(bidir[:, :, :fpc], full[:, :, :fpc])["rel_rms"]
        ok = (err["rel_max"] <= tol["rel_max"] and err["rel_rms"] <= tol["rel_rms"]
              and mask_effect >= MASK_EFFECT_FACTOR * tol["rel_rms"] and bool(torch.isfinite(chunked).all()))
        out.update(err, mask_effect_rel_rms=mask_effect, status=_status(ok),
                   summary=f"rel max {err['rel_max']:.2e}, rel RMS {err['rel_rms']:.2e} (without the mask: rel RMS "
                           f"{mask_effect:.2e})")
        out["kernels"] = _other_kernels(model, x, t, ctx, fpc, chunked, rows, tol)
        if any(k["status"] == "fail" for k in out["kernels"].values()):
            out["status"] = "fail"
            out["summary"] += "; " + ", ".join(f"{n} vs sdpa rel RMS {k['rel_rms']:.2e}"
                                               for n, k in out["kernels"].items())
    except Exception as e:  # recorded as a failure; the report still gets written
        out.update(status="fail", summary=f"{type(e).__name__}: {e}")
    return out


def _other_kernels(model: CausalWanModel, x: torch.Tensor, t: torch.Tensor, ctx: torch.Tensor, fpc: int,
                   reference: torch.Tensor, rows: list[dict[str, Any]], tol: dict[str, float]) -> dict[str, Any]:
    """The chunked forward under each non-SDPA kernel the benchmark rows used, against SDPA's."""
    used = sorted({k for r in rows for k in (r.get("measured_dispatch") or {}) if k != "sdpa"})
    found = {}
    for kind in used:
        with torch.no_grad(), attention_backend.use(kind):
            err = _rel(chunked_forward(model, x, t, ctx, fpc), reference)
        bound = SAGE_REL_RMS if kind == "sage" else tol["rel_rms"]
        found[kind] = {**err, "rel_rms_bound": bound, "status": _status(err["rel_rms"] <= bound)}
    return found


# --------------------------------------------------------------------------------------------- ComfyUI
def default_host() -> Path:
    env = os.environ.get("ECHO_COMFY_HOST")
    return Path(env) if env else REPO / ".cache" / "comfyui-0.3.75"


def import_comfy(host: Path, cpu: bool) -> Any:
    """ComfyUI's model code in this process (forced to CPU when checking the CPU)."""
    host = host.resolve()
    mod = sys.modules.get("comfy")
    origin = "".join(getattr(mod, "__path__", []) or []) if mod is not None else ""
    if origin and not str(Path(origin).resolve()).startswith(str(host)):
        raise RuntimeError(f"a module 'comfy' is already imported from {origin}")
    if str(host) not in sys.path:
        sys.path.insert(0, str(host))
    import importlib

    options = importlib.import_module("comfy.options")
    if options.args_parsing:
        raise RuntimeError("comfy.options.args_parsing is enabled: importing comfy.cli_args would parse sys.argv")
    if cpu:
        importlib.import_module("comfy.cli_args").args.cpu = True  # before comfy.model_management is imported
    for name in ("comfy.model_management", "comfy.ops", "comfy.ldm.wan.model"):
        importlib.import_module(name)
    return sys.modules["comfy"]


def check_comfy_parity(layers: int, latent: tuple[int, int, int], fpc: int, device: torch.device,
                       dtype: torch.dtype, seed: int, host: str | Path | None) -> dict[str, Any]:
    tol = TOLERANCE[dtype]
    out: dict[str, Any] = {"layers": layers, "chunks": 1, "dtype": str(dtype).replace("torch.", ""),
                           "tolerance": tol, "host": None}
    if host is None:
        return {**out, "status": "skipped", "summary": "skipped (--no-comfy)"}
    host_dir = default_host() if host == "default" else Path(host)
    out["host"] = str(host_dir)
    if not (host_dir / "comfy" / "ldm" / "wan" / "model.py").is_file():
        return {**out, "status": "skipped", "summary": f"skipped: no ComfyUI host at {host_dir}"}
    try:
        comfy = import_comfy(host_dir, cpu=device.type == "cpu")
    except Exception as e:
        return {**out, "status": "skipped", "summary": f"skipped: host not importable ({type(e).__name__}: {e})"}
    try:
        import comfyui_version  # type: ignore[import-not-found]

        out["host_version"] = comfyui_version.__version__
    except Exception:
        out["host_version"] = None
    try:
        ours = _model(layers, device, dtype, seed + 200, perturb=True)
        cfg = ours.cfg
        theirs = comfy.ldm.wan.model.WanModel(
            model_type="t2v", patch_size=cfg.patch_size, text_len=cfg.text_len, in_dim=cfg.in_dim, dim=cfg.dim,
            ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, text_dim=cfg.text_dim, out_dim=cfg.out_dim,
            num_heads=cfg.num_heads, num_layers=cfg.num_layers, qk_norm=cfg.qk_norm,
            cross_attn_norm=cfg.cross_attn_norm, eps=cfg.eps, device=device, dtype=dtype,
            operations=comfy.ops.disable_weight_init).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        x, _, ctx = _inputs(ours, fpc, latent, seed + 201, device)
        t = torch.tensor([500.0], device=device)
        with torch.no_grad(), attention_backend.use("sdpa"):
            a = chunked_forward(ours, x, t.expand(1, fpc), ctx, fpc)
            b = theirs(x.to(dtype), t, ctx.to(dtype))
        err = _rel(a, b)
        ok = err["rel_max"] <= tol["rel_max"] and err["rel_rms"] <= tol["rel_rms"] and bool(torch.isfinite(a).all())
        out.update(err, status=_status(ok),
                   summary=f"rel max {err['rel_max']:.2e}, rel RMS {err['rel_rms']:.2e} against ComfyUI "
                           f"{out['host_version'] or ''} WanModel".replace("  ", " "))
    except Exception as e:
        out.update(status="fail", summary=f"{type(e).__name__}: {e}")
    return out
