"""bench/gpu_check.py runs end to end on CPU (the same code as on the GPU), writes both results files with every
key, and its pieces judge what they should: the timeline, the kernel classification, the fp8 row's feature
detection and the results' file name."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "bench"))

import gpu_check  # noqa: E402
from gpu_check_report import render_markdown, results_stem  # noqa: E402

from echo_core.model import attention_backend  # noqa: E402
from echo_core.timeline import parse_timeline  # noqa: E402

TOP_KEYS = {"schema", "created", "command", "device", "settings", "weights_bytes", "policies", "sdpa_kernels_usable",
            "numerics", "targets", "failures", "elapsed_s", "attention_kernels_installed"}
SETTING_KEYS = {"model", "layers", "dtype", "height", "width", "latent_shape", "tokens_per_frame", "chunks",
                "frames_per_chunk", "video_frames_per_chunk", "denoising_steps", "model_calls_per_chunk", "attention",
                "seed", "timeline", "transitions", "warmup_chunks", "numerics_layers", "numerics_chunks", "policies",
                "fps_convention"}
ROW_KEYS = {"name", "description", "available", "reason", "error", "chunks", "video_frames", "fps", "steady_fps",
            "first_chunk_s", "total_s", "median_chunk_s", "chunk_s", "peak_vram_bytes", "peak_cache_mib",
            "peak_cache_tokens", "finite", "measured_dispatch", "scenes", "attention"}
NUMERIC_KEYS = {"layers", "chunks", "dtype", "tolerance", "status", "summary"}


@pytest.mark.slow
def test_cpu_run_writes_every_figure(tmp_path):
    cmd = [sys.executable, "bench/gpu_check.py", "--device", "cpu", "--layers", "1", "--chunks", "3",
           "--height", "64", "--width", "64", "--threads", "1", "--out-dir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_cpu.json", "gpu_cpu.md"]
    res = json.loads((tmp_path / "gpu_cpu.json").read_text())
    assert set(res) == TOP_KEYS
    assert set(res["settings"]) == SETTING_KEYS
    assert res["settings"]["transitions"] == ["hardcut", "recall"] and res["settings"]["model_calls_per_chunk"] == 5
    assert [r["name"] for r in res["policies"]] == ["rolling", "echo", "echo+fp8kv"]
    for row in res["policies"]:
        assert set(row) == ROW_KEYS, row["name"]
        if not row["available"]:  # the fp8 row until the option exists: a reason, never a number
            assert row["name"] == "echo+fp8kv" and row["reason"].startswith("not available in this version")
            assert row["fps"] is None
            continue
        assert row["error"] is None and row["finite"] is True
        assert row["chunks"] == 3 and row["video_frames"] == 36 and row["fps"] > 0 and row["first_chunk_s"] > 0
        assert len(row["chunk_s"]) == 3 and row["peak_vram_bytes"] is None and row["peak_cache_mib"] > 0
        assert row["measured_dispatch"] == {"sdpa": 3 * 5 * 1}  # chunks x calls x layers
        att = row["attention"]
        assert att["ok"] is None and att["label"].startswith("sdpa:") and sum(att["sdpa_kernels"].values()) == 5
    echo = res["policies"][1]
    assert [s["transition"] for s in echo["scenes"]] == [None, "hardcut", "recall"]
    assert echo["scenes"][2]["recall_source"] == 1  # the recall went back to the first scene
    assert res["sdpa_kernels_usable"]["math"] == "ok"
    for name, check in res["numerics"].items():
        assert NUMERIC_KEYS <= set(check), name
    assert res["numerics"]["chunked_vs_full"]["status"] == "pass"
    assert res["numerics"]["comfy_parity"]["status"] in ("pass", "skipped")
    assert res["failures"] == [] and res["targets"][0]["met"] is None
    md = (tmp_path / "gpu_cpu.md").read_text()
    for needle in ("# GPU check: cpu", "| policy | FPS |", "| rolling |", "| echo |", "| echo+fp8kv |",
                   "## Numerics", "chunked cache vs block-causal full forward", "ComfyUI WanModel parity",
                   "## Targets", "## Failures", "4 video frames per latent frame"):
        assert needle in md, needle
    # the same results as a GPU would give them, with a math fall-back and a failed row: both shown as failures
    res["device"].update(type="cuda", name="NVIDIA H200", capability="9.0", total_memory_gib=139.8)
    res["policies"][0]["attention"] = gpu_check.judge_attention({"sdpa": 5}, {"math": 5}, torch.device("cuda"))
    res["policies"][1].update(error="OutOfMemoryError: CUDA out of memory")
    md = render_markdown(res)
    assert "| rolling |" in md and "FAIL: attention: self-attention fell back to math" in md
    assert "FAIL: OutOfMemoryError" in md and "NVIDIA H200 (compute 9.0, 139.8 GiB)" in md


def test_defaults_are_the_gpu_check():
    args = gpu_check.parse_args(["--device", "cpu"])
    assert (args.layers, args.chunks, args.width, args.height, args.dtype) == (30, 20, 832, 480, "bf16")
    assert args.steps == (1000.0, 750.0, 500.0, 250.0) and args.out_dir == REPO / "bench" / "results"
    assert args.policies == ["rolling", "echo", "echo+fp8kv"]
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--device", "cpu", "--chunks", "2"])


@pytest.mark.parametrize("chunks, modes, sizes", [(20, ["smooth", "hardcut", "recall"], [5, 5, 5, 5]),
                                                  (7, ["smooth", "hardcut", "recall"], [2, 2, 2, 1]),
                                                  (3, ["hardcut", "recall"], [1, 1, 1])])
def test_timeline_has_a_smooth_a_hard_cut_and_a_recall(chunks, modes, sizes):
    tl = parse_timeline(gpu_check.echo_timeline_text(chunks))
    assert tl.total_chunks == chunks
    assert [t.mode.value for t in tl.transitions] == modes
    assert [s.num_chunks for s in tl.scenes] == sizes
    assert tl.scenes[-1].prompt == tl.scenes[0].prompt  # the recalled scene repeats the first


def test_sdpa_kernel_seen_by_the_profiler_and_judged():
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(1, 2, 8, 16)
    with attention_backend.recording() as used, profile(activities=[ProfilerActivity.CPU]) as prof:
        attention_backend.attend(q, q, q)
        torch.nn.functional.scaled_dot_product_attention(q, q, q)  # unmarked (a cross-attention): not counted
    assert dict(used) == {"sdpa": 1}
    assert gpu_check.sdpa_kernels(prof.events()) == {"flash(cpu)": 1}
    cuda = torch.device("cuda")  # judging only: no CUDA needed
    assert gpu_check.judge_attention({"sdpa": 9}, {"flash": 9}, cuda)["ok"] is True
    assert gpu_check.judge_attention({"sdpa": 9}, {"efficient": 9}, cuda)["ok"] is True
    math = gpu_check.judge_attention({"sdpa": 9}, {"flash": 5, "math": 4}, cuda)
    assert math["ok"] is False and "math" in math["note"]
    assert gpu_check.judge_attention({"sdpa": 9}, {"unknown": 9}, cuda)["ok"] is False
    assert gpu_check.judge_attention({"sage": 9}, {}, cuda) == {**gpu_check.judge_attention({"sage": 9}, {}, cuda),
                                                                "ok": True, "label": "sage"}
    assert gpu_check.judge_attention({"sdpa": 9}, {"math": 9}, torch.device("cpu"))["ok"] is None


def test_fp8_row_is_feature_detected(monkeypatch):
    policy, reason = gpu_check._echo_fp8(3)
    assert reason is None and policy.kv_dtype == "float8_e4m3fn"  # the echo cache stores fp8 in this version

    @dataclass(frozen=True)
    class Memory:  # stands in for a future option that takes one spelling of fp8
        kv_dtype: str = "bf16"

        def __post_init__(self):
            if self.kv_dtype not in ("bf16", "fp8_e4m3fn"):
                raise ValueError(f"kv_dtype {self.kv_dtype!r}")

    @dataclass(frozen=True)
    class Echo:
        memory: Memory = Memory()

    monkeypatch.setattr(gpu_check, "echo_config_for", lambda fpc: Echo())
    policy, reason = gpu_check._echo_fp8(3)
    assert reason is None and policy == Echo(Memory("fp8_e4m3fn"))


@pytest.mark.parametrize("name, stem", [("NVIDIA H100 80GB HBM3", "gpu_NVIDIA_H100_80GB_HBM3"),
                                        ("NVIDIA H200", "gpu_NVIDIA_H200"), ("cpu", "gpu_cpu"),
                                        ("AMD Instinct MI300X/VF (gfx942:sramecc+:xnack-)",
                                         "gpu_AMD_Instinct_MI300X_VF_gfx942_sramecc_xnack-"), ("../..", "gpu_unknown")])
def test_results_file_name(name, stem):
    assert results_stem(name) == stem
