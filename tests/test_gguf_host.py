"""GGUF weights through ComfyUI-GGUF (city96, .cache/ComfyUI-GGUF from scripts/prepare_comfy_gguf.sh): a tiny causal
Wan written as GGUF (Q8_0, Q4_0) loads through UnetLoaderGGUF and samples through the Echo-Forcing sampler, and
its latents equal those of the same graph on a safetensors file holding the dequantised weights (same seed); so do
they with a LoRA on top (in process).

Dequantised exactly as the loader does (tests/gguf_writer.py): UnetLoaderGGUF multiplies scale x quant in
float16, UnetLoaderGGUFAdvanced with dequant_dtype float32 in float32. Tolerance 1e-5 absolute on latents of
magnitude ~14 (measured: 0.0, bit-identical, on both hosts); the other rounding of the same file differs by ~3e-3,
so the match is not a tolerance too loose to see the weights.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from safetensors.torch import save_file

import comfy_host
import echo_nodes_support as S
import gguf_writer as W

pytestmark = pytest.mark.host

TOL = 1e-5
TIMELINE = "a red fox in the snow [1s#] | a frozen lake [1s]"
QTYPES = ("Q8_0", "Q4_0")


def write_gguf_models(diffusion_models) -> dict[str, str]:
    """Per quant type: the GGUF file, and safetensors of its weights dequantised in float16 / float32."""
    sd, _ = S.tiny_state_dict(3, **S.STOCK_CFG)
    diffusion_models.mkdir(parents=True, exist_ok=True)
    names = {}
    for q in QTYPES:
        written = W.write_gguf(sd, diffusion_models / f"tiny_wan_{q}.gguf", q)
        for tag, dtype in (("fp16", torch.float16), ("fp32", None)):
            name = f"tiny_wan_{q}_dequant_{tag}.safetensors"
            save_file({k: v.contiguous() for k, v in written.as_loaded(dtype).items()}, str(diffusion_models / name))
            names[f"{q}_{tag}"] = name
        names[q] = written.path.name
    return names


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and torch.isfinite(a).all() and torch.isfinite(b).all()
    return (a.float() - b.float()).abs().max().item()


# --------------------------------------------------------------------------------------------- in-process
@pytest.fixture(scope="module")
def gguf_nodes(comfy_inprocess):
    """ComfyUI-GGUF's nodes module, imported as ComfyUI imports a custom node (a package named after its folder)."""
    try:
        pack = comfy_host.find_gguf_pack()
    except comfy_host.ComfyHostMissing as e:
        pytest.fail(str(e), pytrace=False)
    W.gguf_package()  # the PyPI package, before the pack's `import gguf`
    name = pack.name
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, pack / "__init__.py",
                                                      submodule_search_locations=[str(pack)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[f"{name}.nodes"]


@pytest.fixture(scope="module")
def plugin_nodes(comfy_inprocess, tmp_path_factory):
    from importlib import import_module

    plugin = S.load_plugin()
    root = tmp_path_factory.mktemp("gguf_models")
    S.register_models_dir(root)
    names = write_gguf_models(root / "diffusion_models")
    # the same seed-3 weights' stock LoRA (echo_nodes_support): LoRA loaders patch GGUF layers too
    names["lora"] = S.write_stock_dit_and_lora(root / "diffusion_models", root / "loras")[1]
    nodes = {n: import_module(f"{plugin.__name__}.nodes.{n}") for n in ("timeline", "sampler")}
    return nodes, names


def _run(nodes, model, seed: int = 3) -> torch.Tensor:
    enc = nodes["timeline"].StandinTextEncoder(4096, 512)
    spec = nodes["timeline"].PromptTimeline.execute(enc, TIMELINE, 16.0, "smooth").args[0]
    return nodes["sampler"].EchoForcingSampler.execute(model, spec, seed, 64, 64, 2, None, None).args[0]["samples"]


@pytest.mark.parametrize("qtype", QTYPES)
def test_gguf_model_matches_its_dequantised_weights_in_process(gguf_nodes, plugin_nodes, qtype):
    import nodes as comfy_nodes  # ComfyUI's own

    nodes, names = plugin_nodes
    model = gguf_nodes.UnetLoaderGGUF().load_unet(names[qtype])[0]
    q = model.model.diffusion_model.blocks[0].self_attn.q
    assert type(q).__name__ == "Linear" and "GGMLOps" in type(q).__qualname__  # ComfyUI-GGUF's on-the-fly layer
    assert q.weight.dtype == torch.uint8 and q.weight.tensor_type.name == qtype  # still packed blocks
    gguf = _run(nodes, model)
    fp16 = _run(nodes, comfy_nodes.UNETLoader().load_unet(names[f"{qtype}_fp16"], "default")[0])
    fp32 = _run(nodes, comfy_nodes.UNETLoader().load_unet(names[f"{qtype}_fp32"], "default")[0])
    diff, other = _max_diff(gguf, fp16), _max_diff(gguf, fp32)
    print(f"{qtype} UnetLoaderGGUF vs float16 dequant: max abs diff {diff:.3g}; vs float32 dequant {other:.3g}")
    assert diff <= TOL
    assert other > 100 * TOL  # the weights' last bits show: the match above is not a loose tolerance

    if qtype == "Q8_0":
        # a LoRA on the GGUF model (ComfyUI-GGUF applies it at dequantisation) = the same LoRA on the dequantised
        lora = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only
        with_lora = _run(nodes, lora(model, names["lora"], 1.0)[0])
        ref = _run(nodes, lora(comfy_nodes.UNETLoader().load_unet(names[f"{qtype}_fp16"], "default")[0],
                               names["lora"], 1.0)[0])
        assert _max_diff(with_lora, ref) <= TOL
        assert _max_diff(with_lora, gguf) > 0.1  # the LoRA changes the video
        # The advanced loader's float32 dequantisation matches gguf's own dequantiser. Last: ComfyUI-GGUF keeps
        # dequant_dtype on its shared layer class, so this load changes what `model` above computes too.
        adv = gguf_nodes.UnetLoaderGGUFAdvanced().load_unet(names[qtype], "float32", "default", False)[0]
        assert _max_diff(_run(nodes, adv), fp32) <= TOL


def test_packed_weights_compute_in_comfys_dtype_for_the_model(comfy_inprocess):
    """On a GPU ComfyUI computes a GGUF model in fp16/bf16 (its manual-cast or weight dtype): the sampler's
    packed layers follow it, and the K/V cache is sized in it."""
    import types
    from importlib import import_module

    from echo_core.model.adapter import ModuleModel
    from echo_core.model.config import PRESETS
    from echo_core.model.wan import CausalWanModel
    from echo_core.preflight import kv_dtype_of

    host = import_module(f"{S.load_plugin().__name__}.nodes._host")

    def base(cast, weights):
        return types.SimpleNamespace(manual_cast_dtype=cast, get_dtype=lambda: weights)

    assert host.host_compute_dtype(base(torch.bfloat16, torch.uint8)) == torch.bfloat16
    assert host.host_compute_dtype(base(None, torch.float16)) == torch.float16
    assert host.host_compute_dtype(base(None, torch.uint8)) == torch.float32  # not a float: the CPU default
    cfg = PRESETS["tiny"]
    m = CausalWanModel(cfg)
    m.blocks[0].self_attn.q.weight = torch.nn.Parameter(torch.zeros(4, 34, dtype=torch.uint8), requires_grad=False)
    assert kv_dtype_of(ModuleModel(m, cfg, host.host_compute_dtype(base(torch.float16, torch.uint8)))) == torch.float16


# --------------------------------------------------------------------------------------------- real server
@pytest.fixture(scope="module")
def gguf_server(comfy_host_version, comfy_inprocess, tmp_path_factory):
    """A server of each host with ComfyUI-GGUF linked beside the plugin (its own: the session server's node list
    stays as it is), and its own models folder with the GGUF files."""
    try:
        pack = comfy_host.find_gguf_pack()
    except comfy_host.ComfyHostMissing as e:
        pytest.fail(str(e), pytrace=False)
    host = comfy_host_version
    work = tmp_path_factory.mktemp(f"gguf_server_{host.version}")
    models = comfy_host.make_models_dir(work / "models")
    names = write_gguf_models(models / "diffusion_models")
    server = comfy_host.ComfyServer(host.root, work, models_dir=models, python=host.python,
                                    extra_custom_nodes=[pack])
    server.names, server.version = names, host.version
    with server:
        yield server


def _graph(loader: dict, prefix: str, seed: int = 5) -> dict:
    return {
        "1": loader,
        "2": {"class_type": "EchoStandinTextEncoder", "inputs": {"dim": 4096, "length": 512}},
        "3": {"class_type": "EchoPromptTimeline", "inputs": {"clip": ["2", 0], "timeline": TIMELINE, "fps": 16.0}},
        "6": {"class_type": "EchoForcingSampler",
              "inputs": {"model": ["1", 0], "timeline": ["3", 0], "seed": seed, "width": 64, "height": 64,
                         "steps": 2}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": prefix}},
    }


def _latent(server, entry: dict) -> torch.Tensor:
    from safetensors.torch import load

    item = entry["outputs"]["7"]["latents"][0]
    return load(server.view(item["filename"], item["subfolder"], item["type"]))["latent_tensor"]


def test_unet_loader_gguf_feeds_the_sampler_in_the_server(gguf_server):
    server = gguf_server
    info = server.object_info("UnetLoaderGGUF")["UnetLoaderGGUF"]
    listed = info["input"]["required"]["unet_name"][0]
    assert {server.names[q] for q in QTYPES} <= set(listed), listed
    for q in QTYPES:
        gguf = _latent(server, server.run_prompt(_graph(
            {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": server.names[q]}}, f"gguf_{q}"), timeout=180))
        ref = _latent(server, server.run_prompt(_graph(
            {"class_type": "UNETLoader", "inputs": {"unet_name": server.names[f"{q}_fp16"], "weight_dtype": "default"}},
            f"dequant_{q}"), timeout=180))
        diff = _max_diff(gguf, ref)
        print(f"ComfyUI {server.version}: {q} GGUF vs dequantised safetensors, max abs diff {diff:.3g} "
              f"(latent max {ref.abs().max().item():.3g})")
        assert diff <= TOL
        assert ref.abs().max() > 1  # a real video's latents, not zeros
