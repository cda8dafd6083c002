"""GGUF weights without a host: the size tables behind budget.weights_bytes(cfg, "gguf_..."), the compute dtype of
packed (integer-block) weights, and the tests' own GGUF writer read back with gguf's reader (marked `host`: the
`gguf` package comes with the hosts, scripts/prepare_comfy_gguf.sh)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from echo_core.budget import weights_bytes
from echo_core.errors import SpecError
from echo_core.model.config import PRESETS
from echo_core.model.gguf_size import BLOCK_BYTES, FILE_TYPES, gguf_bytes, gguf_tensor_type, wan_tensor_shapes
from echo_core.model.wan import CausalWanModel, compute_dtype, packed_weights_dtype


@pytest.mark.parametrize("preset", ["tiny", "toy", "tiny-comfy"])
def test_tensor_shapes_are_the_models_state_dict(preset):
    cfg = PRESETS[preset]
    sd = CausalWanModel(cfg).state_dict()
    assert list(wan_tensor_shapes(cfg).items()) == [(k, tuple(v.shape)) for k, v in sd.items()]


@pytest.mark.parametrize("preset", ["wan2.1-t2v-1.3b", "wan2.1-t2v-14b"])
def test_tensor_shapes_count_every_parameter(preset):
    cfg = PRESETS[preset]
    assert 2 * sum(math.prod(s) for s in wan_tensor_shapes(cfg).values()) == weights_bytes(cfg, torch.bfloat16)


@pytest.mark.host  # gguf comes with the hosts (scripts/prepare_comfy_gguf.sh)
def test_block_sizes_are_ggmls():
    from gguf_writer import gguf_package

    gguf = gguf_package()
    for name, sizes in BLOCK_BYTES.items():
        assert tuple(gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]) == sizes, name


def test_q8_and_q4_bytes_of_wan_1_3b_from_its_linear_weights():
    """Recount by hand: the 8 attention Linears and 2 FFN Linears of each block are quantised; every other 2-D
    weight stays bf16, the rest (biases, norms, modulation, the 5-D patch embedding) float32."""
    cfg = PRESETS["wan2.1-t2v-1.3b"]
    d, f, L = cfg.dim, cfg.ffn_dim, cfg.num_layers
    value = L * 2 * d * d  # self/cross .v.weight
    down = L * d * f  # ffn.2.weight
    other_q = L * (6 * d * d + f * d)  # q, k, o (twice) and ffn.0
    bf16 = d * cfg.text_dim + d * d + d * cfg.freq_dim + d * d + 6 * d * d + 64 * d  # embeddings, projection, head
    f32 = sum(math.prod(s) for s in wan_tensor_shapes(cfg).values()) - value - down - other_q - bf16
    rest = 2 * bf16 + 4 * f32
    assert weights_bytes(cfg, "gguf_q8_0") == (value + down + other_q) * 34 // 32 + rest
    assert weights_bytes(cfg, "gguf_q4_0") == down * 20 // 32 + (value + other_q) * 18 // 32 + rest
    assert weights_bytes(cfg, "GGUF_Q4_K_M") == (value + down) * 210 // 256 + other_q * 144 // 256 + rest
    bf16_all = weights_bytes(cfg, torch.bfloat16)
    assert 0.5 < weights_bytes(cfg, "gguf_q8_0") / bf16_all < 0.6  # ~8.5 bits per weight against 16
    assert 0.28 < weights_bytes(cfg, "gguf_q4_0") / bf16_all < 0.33


def test_every_file_type_is_smaller_than_bf16_and_ordered():
    cfg = PRESETS["wan2.1-t2v-14b"]
    sizes = [gguf_bytes(cfg, ft) for ft in ("q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0")]
    assert sizes == sorted(sizes, reverse=True) and sizes[0] < weights_bytes(cfg, torch.bfloat16)
    assert set(FILE_TYPES) >= {"q8_0", "q4_0", "q4_k_m"}


def test_tensor_types_follow_the_converter():
    assert gguf_tensor_type("blocks.3.self_attn.q.weight", (1536, 1536), "q4_k_m") == "Q4_K"
    assert gguf_tensor_type("blocks.3.cross_attn.v.weight", (1536, 1536), "q4_k_m") == "Q6_K"
    assert gguf_tensor_type("blocks.3.ffn.2.weight", (1536, 8960), "q4_0") == "Q4_1"
    assert gguf_tensor_type("blocks.3.ffn.0.bias", (8960,), "q8_0") == "F32"
    assert gguf_tensor_type("blocks.3.modulation", (1, 6, 1536), "q8_0") == "F32"
    assert gguf_tensor_type("patch_embedding.weight", (1536, 16, 1, 2, 2), "q8_0") == "F32"
    assert gguf_tensor_type("head.head.weight", (64, 1536), "q8_0") == "BF16"
    assert gguf_tensor_type("blocks.0.self_attn.q.weight", (64, 100), "q4_k_m") == "F16"  # rows not 256-aligned


def test_unknown_weight_format_names_the_choices():
    with pytest.raises(SpecError, match=r"gguf_q8_0.*gguf_q4_0") as e:
        weights_bytes(PRESETS["tiny"], "gguf_q3_xs")
    assert e.value.field == "weights"
    with pytest.raises(SpecError):
        weights_bytes(PRESETS["tiny"], "q8_0")


# --------------------------------------------------------------------------------------------- compute dtype
def test_packed_weights_compute_in_the_adapters_dtype():
    """GGUF layers hold uint8 blocks and dequantise to their input's dtype: the adapter chooses it (the host's
    model dtype), while float and fp8 weights keep their own rule."""
    from echo_core.model.adapter import ModuleModel
    from echo_core.preflight import kv_dtype_of

    packed = torch.zeros(4, 34, dtype=torch.uint8)
    assert compute_dtype(packed) == torch.float32
    with packed_weights_dtype(torch.float16):
        assert compute_dtype(packed) == torch.float16
        assert compute_dtype(torch.zeros(2, dtype=torch.bfloat16)) == torch.bfloat16
    assert compute_dtype(torch.zeros(2, dtype=torch.float8_e4m3fn)) == torch.bfloat16
    assert compute_dtype(None) == torch.float32

    cfg = PRESETS["tiny"]
    model = CausalWanModel(cfg)
    model.blocks[0].self_attn.q.weight = nn.Parameter(packed, requires_grad=False)
    assert kv_dtype_of(ModuleModel(model, cfg, torch.bfloat16)) == torch.bfloat16
    assert kv_dtype_of(ModuleModel(model, cfg)) == torch.float32


# --------------------------------------------------------------------------------------------- the tests' writer
@pytest.mark.host
@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_writer_round_trips_through_ggufs_reader(tmp_path, qtype):
    import gguf_writer as W
    from echo_nodes_support import STOCK_CFG, tiny_state_dict

    sd, _ = tiny_state_dict(3, **STOCK_CFG)
    written = W.write_gguf(sd, tmp_path / "m.gguf", qtype)
    stored = W.stored_types(tmp_path / "m.gguf")
    assert stored == written.types and set(stored) == set(sd)
    assert stored["blocks.0.ffn.0.weight"] == qtype and stored["blocks.0.ffn.0.bias"] == "F32"
    assert stored["patch_embedding.weight"] == stored["blocks.1.modulation"] == "F32"
    for name, w in sd.items():
        back = written.dequantised[name]
        assert back.shape == w.shape
        err = (back - w).abs().max().item()
        if stored[name] == "F32":
            assert err == 0, name
        else:  # block-wise absmax scaling: error at most half a step of the block's scale
            step = w.abs().max().item() / (127 if qtype == "Q8_0" else 7)
            assert 0 < err <= step, (name, err, step)
    fp16 = written.as_loaded()
    assert fp16["blocks.0.ffn.0.bias"] is written.dequantised["blocks.0.ffn.0.bias"]
    assert torch.equal(fp16["blocks.0.ffn.0.weight"], written.dequantised["blocks.0.ffn.0.weight"].half().float())
    with pytest.raises(ValueError, match="qtype_name"):
        W.write_gguf(sd, tmp_path / "k.gguf", "Q4_K")
