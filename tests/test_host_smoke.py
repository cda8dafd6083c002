"""The real ComfyUI hosts (0.3.75 and 0.8.0): a server subprocess with this plugin mounted, and in-process model
code (0.3.75)."""

from __future__ import annotations

import io
import re

import pytest
import torch

from comfy_host import PLUGIN_DIR_NAME, REPO_ROOT, PromptFailed, parse_binary_frame

pytestmark = pytest.mark.host


# ---------------------------------------------------------------------------------------------------------
# Server subprocess
# ---------------------------------------------------------------------------------------------------------

def test_server_answers_with_stock_nodes(comfy_server):
    info = comfy_server.object_info()
    for node in ("KSampler", "UNETLoader", "VAEDecode", "ModelSamplingSD3", "SaveImage"):
        assert node in info, f"stock node {node} missing from /object_info"
    assert comfy_server.object_info("KSampler")["KSampler"]["output"] == ["LATENT"]
    stats = comfy_server.get_json("/system_stats")
    assert stats["system"]["comfyui_version"] == comfy_server.version
    assert [d["type"] for d in stats["devices"]] == ["cpu"]


def test_plugin_is_mounted_and_imports(comfy_server):
    link = comfy_server.base_dir / "custom_nodes" / PLUGIN_DIR_NAME
    assert link.resolve() == REPO_ROOT
    log = comfy_server.log_text()
    lines = [ln for ln in log.splitlines() if ln.rstrip().endswith(PLUGIN_DIR_NAME) and "seconds" in ln]
    assert lines, f"ComfyUI did not try to load the plugin; log tail:\n{comfy_server.log_tail()}"
    if (REPO_ROOT / "__init__.py").exists():
        # Once the plugin has its entry point it must import cleanly.
        assert "IMPORT FAILED" not in lines[0], f"plugin failed to import:\n{log[-6000:]}"
    else:
        # Until then ComfyUI reports it as a failed node pack and carries on serving stock nodes.
        assert "IMPORT FAILED" in lines[0]


def test_prompt_runs_and_streams_over_websocket(comfy_server):
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 8, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "smoke"}},
    }
    ws = comfy_server.websocket()
    entry = comfy_server.run_prompt(graph, timeout=60, client_id=ws.client_id)
    image = entry["outputs"]["2"]["images"][0]
    png = comfy_server.view(image["filename"], image["subfolder"], image["type"])

    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.size == (16, 8)
        assert im.convert("RGB").getpixel((3, 3)) == (255, 0, 0)
    ws.wait_for(lambda c: c.of_type("execution_success"), timeout=10)
    assert any(d.get("node") == "2" for d in ws.of_type("executing"))


def test_bad_prompt_is_rejected_with_node_errors(comfy_server):
    graph = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    with pytest.raises(PromptFailed, match="NoSuchNode"):
        comfy_server.post_prompt(graph)


def test_server_memory_is_measured(comfy_server):
    rss = comfy_server.rss_bytes()
    assert 50 * 2**20 < rss < 16 * 2**30
    assert comfy_server.rss_bytes("VmHWM") >= rss


def test_factory_server_stops_its_process_group(comfy_server_factory):
    server = comfy_server_factory(plugin_dir=None)
    pid = server.pid
    assert server.alive()
    server.stop()
    assert not server.alive()
    with pytest.raises(ProcessLookupError):
        import os

        os.killpg(pid, 0)


def test_preview_frame_parser():
    # Layout of server.send_image: [event=1][type=1 JPEG][bytes]
    frame = (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\xff\xd8jpeg"
    p = parse_binary_frame(frame)
    assert (p.event, p.mime, p.data) == (1, "image/jpeg", b"\xff\xd8jpeg")
    meta = b'{"image_type": "image/png", "node_id": "3"}'
    frame = (4).to_bytes(4, "big") + len(meta).to_bytes(4, "big") + meta + b"PNG"
    p = parse_binary_frame(frame)
    assert (p.mime, p.data, p.metadata["node_id"]) == ("image/png", b"PNG", "3")


# ---------------------------------------------------------------------------------------------------------
# In-process model code
# ---------------------------------------------------------------------------------------------------------

def _tiny_wan(comfy, seed: int = 0):
    wan = comfy.wan.WanModel(model_type="t2v", dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_dim=32,
                             freq_dim=32, text_len=16, device="cpu", dtype=torch.float32,
                             operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # disable_weight_init leaves parameters uninitialised
        for p in wan.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return wan.eval()


def test_inprocess_import_is_cpu_and_leaves_argv_alone(comfy_inprocess):
    import comfy.options

    assert comfy.options.args_parsing is False
    assert comfy_inprocess.args.cpu is True
    assert comfy_inprocess.model_management.get_torch_device().type == "cpu"


def test_comfy_wan_model_uses_original_wan_names(comfy_inprocess):
    names = set(_tiny_wan(comfy_inprocess).state_dict())
    expected = {
        "patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.weight", "time_embedding.0.weight",
        "time_embedding.2.weight", "time_projection.1.weight", "head.head.weight", "head.modulation",
        "blocks.1.modulation", "blocks.1.norm3.weight", "blocks.1.ffn.0.weight", "blocks.1.ffn.2.weight",
    }
    expected |= {f"blocks.1.{a}.{p}.weight" for a in ("self_attn", "cross_attn")
                 for p in ("q", "k", "v", "o", "norm_q", "norm_k")}
    assert expected <= names, sorted(expected - names)
    assert not any(re.match(r"blocks\.\d+\.(norm1|norm2)\.", n) for n in names)  # affine-free LayerNorms


def test_comfy_wan_model_runs_tiny_on_cpu(comfy_inprocess):
    wan = _tiny_wan(comfy_inprocess)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 3, 4, 6, generator=gen)
    ctx = torch.randn(1, 16, 32, generator=gen)
    with torch.no_grad():
        out = wan(x, torch.tensor([500.0]), ctx)
        per_frame_same = wan(x, torch.tensor([[500.0, 500.0, 500.0]]), ctx)
        per_frame_diff = wan(x, torch.tensor([[100.0, 500.0, 900.0]]), ctx)
        other_t = wan(x, torch.tensor([900.0]), ctx)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    # One timestep per latent frame is accepted; equal per-frame values reproduce the scalar case.
    torch.testing.assert_close(per_frame_same, out, rtol=0, atol=1e-5)
    # Frame 1 keeps t=500, but attention mixes frames, so only a changed timestep must change the output.
    assert (per_frame_diff - out).abs().max() > 1e-4
    assert (other_t - out).abs().max() > 1e-4
