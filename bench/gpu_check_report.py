"""Results files of bench/gpu_check.py: `gpu_<device name>.json` (every figure and setting) and `.md` (tables)."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]


def device_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"type": device.type, "torch": torch.__version__, "python": sys.version.split()[0],
                            "cuda": torch.version.cuda, "git_commit": _git_commit()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"{props.major}.{props.minor}",
                    total_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    else:
        info.update(name=device.type, processor=platform.processor() or platform.machine(),
                    threads=torch.get_num_threads())
    return info


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def results_stem(device_name: str) -> str:
    """gpu_<device name> with every character other than letters, digits, '.', '_' and '-' replaced by '_'."""
    return "gpu_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", device_name).strip("._") or "unknown")


def write_results(results: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    for path, text in zip(paths, (render_markdown(results), json.dumps(results, indent=1) + "\n")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return paths


def _f(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _row_status(r: dict[str, Any]) -> str:
    if not r["available"]:
        return r["reason"]
    if r["error"]:
        return "FAIL: " + r["error"].splitlines()[0][:120]
    problems = []
    if r["attention"]["ok"] is False:
        problems.append(f"attention: {r['attention']['note']}")
    if not r["finite"]:
        problems.append("non-finite latents")
    return "FAIL: " + "; ".join(problems) if problems else "ok"


def render_markdown(res: dict[str, Any]) -> str:
    s, d = res["settings"], res["device"]
    installed = ", ".join(k for k, v in res["attention_kernels_installed"].items() if v and k != "sdpa") or "none"
    where = (f"{d['name']} (compute {d.get('capability')}, {d.get('total_memory_gib')} GiB)" if d["type"] == "cuda"
             else f"CPU ({d.get('processor')}, {d.get('threads')} threads)")
    lines = [
        f"# GPU check: {d['name']}", "",
        f"{res['created']} on {where}; torch {d['torch']}, CUDA {d['cuda']}, commit {d['git_commit']}; "
        f"the whole check took {res['elapsed_s']:.1f} s.", "",
        f"`{res['command']}`", "",
        f"Model: Wan2.1-T2V-1.3B architecture, {s['layers']} layer(s), seeded random weights in {s['dtype']} "
        f"({res['weights_bytes'] / 2**30:.2f} GiB); {s['width']}x{s['height']} (latent {s['latent_shape'][2]}x"
        f"{s['latent_shape'][1]}, {s['tokens_per_frame']} tokens per frame); {len(s['denoising_steps'])} steps + "
        f"commit per chunk; {s['frames_per_chunk']} latent frames = {s['video_frames_per_chunk']} video frames per "
        f"chunk; {s['chunks']} chunks per policy; attention setting `{s['attention']}`.", "",
        f"Timeline (every policy): `{s['timeline']}` ({', '.join(s['transitions'])}).", "",
        "| policy | FPS | steady FPS | first chunk s | median chunk s | peak VRAM GiB | cache MiB | attention "
        "| status |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in res["policies"]:
        vram = None if r["peak_vram_bytes"] is None else r["peak_vram_bytes"] / 2**30
        attention = (r["attention"] or {}).get("label", "–")
        lines.append(f"| {r['name']} | {_f(r['fps'])} | {_f(r['steady_fps'])} | {_f(r['first_chunk_s'], 3)} | "
                     f"{_f(r['median_chunk_s'], 3)} | {_f(vram)} | {_f(r['peak_cache_mib'], 1)} | {attention} | "
                     f"{_row_status(r)} |")
    lines += ["", f"FPS convention: {s['fps_convention']}. Peak VRAM: torch.cuda.max_memory_allocated over the "
              "measured run, weights included (– on CPU).", "",
              "SDPA kernels that accept the self-attention's shapes and dtype, each tried alone: "
              + ", ".join(f"{k} {v.split(':')[0]}" for k, v in res["sdpa_kernels_usable"].items())
              + f" (reasons in the JSON). Optional kernels installed: {installed}.", "",
              "## Numerics", "", "| check | result | tolerance | status |", "|---|---|---|---|"]
    names = {"chunked_vs_full": "chunked cache vs block-causal full forward",
             "comfy_parity": "ComfyUI WanModel parity, one chunk"}
    for key, check in res["numerics"].items():
        tol = check["tolerance"]
        what = f"{names[key]} ({check['layers']} layer(s), {check['chunks']} chunk(s), {check['dtype']})"
        lines.append(f"| {what} | {check['summary']} | rel max {tol['rel_max']:g}, rel RMS {tol['rel_rms']:g} | "
                     f"{check['status']} |")
    lines += ["", "## Targets", "", "| target | value | status |", "|---|---|---|"]
    for t in res["targets"]:
        status = t.get("note") or ("met" if t["met"] else "MISSED" if t["met"] is False else "not measured")
        lines.append(f"| {t['target']} | {'–' if t['value'] is None else t['value']} | {status} |")
    lines += ["", "## Failures", ""] + ([f"- {f}" for f in res["failures"]] or ["none"])
    return "\n".join(lines) + "\n"
