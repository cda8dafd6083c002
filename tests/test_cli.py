"""`python -m echo_core generate`: outputs, report, text-embedding files and user errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from echo_core.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_generate_tiny_random_writes_latents_and_report(tmp_path):
    out, report = tmp_path / "v.safetensors", tmp_path / "r.json"
    rc = main(["generate", "--preset", "tiny-random", "--timeline", "a fox[2s#] | a bird[2s]", "--memory", "rolling",
               "--out", str(out), "--report", str(report), "--steps", "1000,500"])
    assert rc == 0
    latents = load_file(str(out))["latents"]
    data = json.loads(report.read_text())
    # 4 s at 16 fps -> 64 frames -> 16 latent frames -> rounded up to 18 (6 chunks of 3)
    assert latents.shape == (1, 16, 18, 8, 8)
    assert len(data["chunk_reports"]) == 6
    assert [r["scene"] for r in data["chunk_reports"]] == [0, 0, 1, 1, 1, 1]
    assert all(r["cache_tokens"] > 0 and r["cache_bytes"] > 0 and r["wall_s"] > 0 for r in data["chunk_reports"])
    assert data["timeline"]["transitions"][0]["mode"] == "hardcut"


def test_text_embeds_file_per_scene_changes_output(tmp_path):
    cfg_dim = 32  # tiny preset text_dim
    g = torch.Generator().manual_seed(0)
    emb = tmp_path / "e.safetensors"
    save_file({"context.0": torch.randn(5, cfg_dim, generator=g), "context.1": torch.randn(1, 5, cfg_dim, generator=g)},
              str(emb))
    common = ["generate", "--preset", "tiny-random", "--timeline", "x[1s] | y[1s]", "--memory", "rolling",
              "--steps", "1000"]
    assert main([*common, "--text-embeds", str(emb), "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main([*common, "--out", str(tmp_path / "b.safetensors")]) == 0
    a = load_file(str(tmp_path / "a.safetensors"))["latents"]
    b = load_file(str(tmp_path / "b.safetensors"))["latents"]
    assert a.shape == b.shape and not torch.equal(a, b)


@pytest.mark.parametrize("args, needle", [
    (["--timeline", "a cat[10x]"], "timeline"),
    (["--prompt", "a cat[3s]"], "--prompt"),
    (["--prompt", "a cat", "--width", "100"], "--width"),
    (["--prompt", "a cat", "--steps", "500,1000"], "--steps"),
])
def test_user_errors_exit_2_with_named_field(tmp_path, capsys, args, needle):
    out = tmp_path / "never.safetensors"
    rc = main(["generate", "--preset", "tiny-random", "--memory", "rolling", "--out", str(out), *args])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing half-written


def test_missing_checkpoint_and_embeds_are_named(tmp_path, capsys):
    rc = main(["generate", "--checkpoint", str(tmp_path / "nope.pt"), "--prompt", "a", "--out",
               str(tmp_path / "o.safetensors")])
    assert rc == 2 and "--checkpoint" in capsys.readouterr().err
    emb = tmp_path / "e.safetensors"
    save_file({"other": torch.zeros(2, 32)}, str(emb))
    rc = main(["generate", "--preset", "tiny-random", "--timeline", "a[1s] | b[1s]", "--text-embeds", str(emb),
               "--out", str(tmp_path / "o.safetensors")])
    assert rc == 2 and "context.0" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "echo_core", "generate", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--timeline" in proc.stdout
