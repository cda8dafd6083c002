"""Tiny model files and graph helpers for the node tests (in-process and real server).

Files: a tiny causal Wan DiT in each layout the loader reads, a tiny Wan 2.1 VAE the stock VAELoader accepts
(built from ComfyUI's own module), a tiny LoRA, and a "wrong architecture" file (a VAE in diffusion_models).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "example_workflows"  # templates: UI format + thumbnails (what ComfyUI's Templates menu lists)
API_WORKFLOWS = REPO / "api_workflows"  # their API-format twins for POST /prompt (a folder the menu does not read)

# Files the real-model templates name, and what the test servers hold under those names: tiny stand-ins of the
# same kind, so the templates open with nothing missing and their API twins run (umT5 cannot run on these
# machines: its file is a placeholder and the headless runs swap CLIPLoader for the stand-in text encoder).
REAL_MODEL_FILES = {
    "diffusion_models": ("self_forcing_dmd.pt", "causal_forcing-framewise.safetensors"),
    "text_encoders": ("umt5_xxl_fp8_e4m3fn_scaled.safetensors",),
    "vae": ("wan_2.1_vae.safetensors",),
}

# A DiT ComfyUI's own detection accepts (128-dim heads, text_dim 4096 - its detection does not read text_dim).
STOCK_CFG = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=4096, freq_dim=256, text_len=512)


def tiny_state_dict(seed: int = 0, **overrides) -> tuple[dict[str, torch.Tensor], Any]:
    from echo_core.model.config import preset_with
    from echo_core.model.wan import CausalWanModel

    cfg = preset_with("tiny", **overrides)
    torch.manual_seed(seed)
    model = CausalWanModel(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # move every parameter off its init so all of them matter
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, cfg


def write_dit_layouts(folder: Path, seed: int = 0) -> dict[str, str]:
    """The same tiny weights in several layouts; returns layout -> file name (relative to `folder`)."""
    from safetensors.torch import save_file

    from echo_core.model.loading import save_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    sd, cfg = tiny_state_dict(seed)
    names = {}
    save_checkpoint(sd, folder / "tiny_wan.safetensors", config=cfg)
    names["wan"] = "tiny_wan.safetensors"
    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}, "step": 10}, folder / "tiny_self_forcing.pt")
    names["self_forcing"] = "tiny_self_forcing.pt"
    meta = {"echo_forcing.config": json.dumps(cfg.to_dict())}
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in sd.items()},
              str(folder / "tiny_comfyui.safetensors"), metadata=meta)
    names["comfyui"] = "tiny_comfyui.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "tiny_causal_forcing-framewise.safetensors"),
              metadata={**meta, "config": json.dumps({"transformer": {"causal_ar": True}})})
    names["causal_forcing_comfy"] = "tiny_causal_forcing-framewise.safetensors"
    return names


def write_tiny_vae(path: Path, comfy) -> Path:
    """A Wan 2.1 VAE with dim 8, from ComfyUI's own module: VAELoader recognises it as Wan 2.1."""
    from comfy.ldm.wan.vae import WanVAE
    from safetensors.torch import save_file

    torch.manual_seed(0)
    vae = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                 temperal_downsample=[False, True, True])
    # ComfyUI's layers skip weight init (torch.empty): give every parameter finite values, or VAE Encode gives NaN
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if p.ndim > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.fill_(1.0 if "gamma" in name else 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(path))
    return path


def write_stock_dit_and_lora(folder: Path, lora_folder: Path, seed: int = 3, rank: int = 4) -> tuple[str, str, str]:
    """A DiT the stock UNETLoader reads, a ComfyUI-style LoRA for it, and the same weights with the LoRA merged.

    Returns (base file, lora file, merged file) names. The merge is done here by hand (W + strength * up @ down *
    alpha / rank), independently of both loaders."""
    from echo_core.model.loading import save_checkpoint

    sd, cfg = tiny_state_dict(seed, **STOCK_CFG)
    folder.mkdir(parents=True, exist_ok=True)
    lora_folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(sd, folder / "stock_base.safetensors", config=cfg)
    gen = torch.Generator().manual_seed(seed + 10)
    lora, merged = {}, dict(sd)
    alpha = 2.0
    for key in ("blocks.0.self_attn.q", "blocks.1.cross_attn.v", "blocks.0.ffn.0"):
        w = sd[key + ".weight"]
        down = torch.randn(rank, w.shape[1], generator=gen) * 0.1
        up = torch.randn(w.shape[0], rank, generator=gen) * 0.1
        lora[f"diffusion_model.{key}.lora_down.weight"] = down
        lora[f"diffusion_model.{key}.lora_up.weight"] = up
        lora[f"diffusion_model.{key}.alpha"] = torch.tensor(alpha)
        merged[key + ".weight"] = w + (up @ down) * (alpha / rank)
    from safetensors.torch import save_file

    save_file(lora, str(lora_folder / "stock_lora.safetensors"))
    save_checkpoint(merged, folder / "stock_merged.safetensors", config=cfg)
    return "stock_base.safetensors", "stock_lora.safetensors", "stock_merged.safetensors"


def write_test_models(models: Path, comfy) -> Any:
    """Every model file the server tests use, written once per session into a models folder."""
    import shutil
    import types

    from safetensors.torch import save_file

    names = write_dit_layouts(models / "diffusion_models")
    stock = write_stock_dit_and_lora(models / "diffusion_models", models / "loras")
    vae = write_tiny_vae(models / "vae" / "tiny_wan21_vae.safetensors", comfy)
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(4, 1, 1, 1), "decoder.head.0.gamma": torch.ones(4)},
              str(models / "diffusion_models" / "wrong_architecture.safetensors"))
    # Stand-ins under the real names (see REAL_MODEL_FILES).
    dm = models / "diffusion_models"
    shutil.copyfile(dm / names["self_forcing"], dm / "self_forcing_dmd.pt")
    sd, cfg = tiny_state_dict(3, **STOCK_CFG)  # a stock-loadable DiT marked frame-wise, as the real file is
    save_file({k: v.contiguous() for k, v in sd.items()}, str(dm / "causal_forcing-framewise.safetensors"),
              metadata={"config": json.dumps({"transformer": {"causal_ar": True}})})
    shutil.copyfile(vae, models / "vae" / "wan_2.1_vae.safetensors")
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file({"placeholder": torch.zeros(1)}, str(models / "text_encoders" / "umt5_xxl_fp8_e4m3fn_scaled.safetensors"))
    return types.SimpleNamespace(names=names, stock=stock, dir=models)


def load_api_workflow(name: str) -> dict:
    return json.loads((API_WORKFLOWS / name).read_text())


def find_nodes(graph: dict, class_type: str) -> list[str]:
    return [nid for nid, node in graph.items() if node["class_type"] == class_type]


def substitute_text_encoder(graph: dict, dim: int, length: int) -> dict:
    """Replace every CLIPLoader (umT5 cannot run here) with the stand-in text encoder of the given size."""
    g = copy.deepcopy(graph)
    for nid in find_nodes(g, "CLIPLoader"):
        g[nid] = {"class_type": "EchoStandinTextEncoder", "inputs": {"dim": dim, "length": length}}
    return g


def set_inputs(graph: dict, class_type: str, **values) -> dict:
    g = copy.deepcopy(graph)
    ids = find_nodes(g, class_type)
    if not ids:
        raise KeyError(f"no {class_type} node in the graph")
    for nid in ids:
        g[nid]["inputs"].update(values)
    return g


def load_plugin(module_name: str = "echo_forcing_plugin"):
    """Import the plugin package the way ComfyUI does (a package named after its folder, relative imports)."""
    import importlib.util
    import sys

    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def register_models_dir(models_dir: Path) -> None:
    """Point this process's folder_paths at a test models folder (in-process node tests)."""
    import folder_paths

    for sub in ("diffusion_models", "vae", "text_encoders", "loras"):
        (models_dir / sub).mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path(sub, str(models_dir / sub), is_default=True)
