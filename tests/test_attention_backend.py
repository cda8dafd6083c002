"""The attention kernel dispatch (echo_core.model.attention_backend) on CPU.

sageattention and flash_attn are stood in by fake modules injected into sys.modules: each computes reference
attention in its own layout and checks the layout it was handed ([B, H, L, D] "HND" for sage, [B, L, H, D] for
flash). The CUDA check is patched, so what is tested is the dispatch: which kernel runs for which inputs and
setting, that it gets the right layout and that the result is SDPA's.
"""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from echo_core.cache.rolling import RollingCache
from echo_core.errors import SpecError
from echo_core.model import attention_backend as ab
from echo_core.model.config import get_preset
from echo_core.model.wan import CausalWanModel
from echo_core.sampler import SamplerConfig, ScenePlan, generate

torch.set_grad_enabled(False)
B, H, LQ, LK, D = 2, 3, 6, 10, 16  # every axis a different size, so a wrong layout cannot pass


def _reference(q, k, v):  # [B, H, L, D], float32 math
    w = (q.float() @ k.float().transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
    return (w @ v.float()).to(q.dtype)


class Calls(list):
    """The calls the fake kernels saw; `heads` is the head count they expect on their head axis."""

    heads = H


def _fake_sage(calls: Calls, fail: bool = False) -> types.ModuleType:
    mod = types.ModuleType("sageattention")

    def sageattn(q, k, v, tensor_layout="HND", is_causal=False, sm_scale=None, **kwargs):
        if fail:
            raise RuntimeError("no kernel image for this device")
        assert tensor_layout == "HND" and not is_causal and sm_scale is None
        assert q.shape[1] == k.shape[1] == calls.heads  # "HND": heads on axis 1
        calls.append(("sage", tuple(q.shape), tuple(k.shape)))
        return _reference(q, k, v)

    mod.sageattn = sageattn
    return mod


def _fake_flash(calls: Calls, fail: bool = False) -> types.ModuleType:
    mod = types.ModuleType("flash_attn")

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
        if fail:
            raise RuntimeError("no kernel image for this device")
        assert dropout_p == 0.0 and not causal and softmax_scale is None
        assert q.shape[2] == k.shape[2] == calls.heads  # [B, L, H, D]: heads on axis 2
        assert q.dtype in (torch.float16, torch.bfloat16) and q.stride(-1) == 1
        calls.append(("flash", tuple(q.shape), tuple(k.shape)))
        return _reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    mod.flash_attn_func = flash_attn_func
    return mod


@pytest.fixture
def kernels(monkeypatch):
    """Install fakes of both kernels on a pretend CUDA device; returns the list of calls they saw."""
    calls = Calls()
    monkeypatch.setitem(sys.modules, "sageattention", _fake_sage(calls))
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash(calls))
    monkeypatch.setattr(ab, "_on_cuda", lambda x: True)
    monkeypatch.setattr(ab, "_BROKEN", set())
    return calls


def _qkv(dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, LQ, D, generator=g).to(dtype)
    k = torch.randn(B, H, LK, D, generator=g).to(dtype)
    v = torch.randn(B, H, LK, D, generator=g).to(dtype)
    return q, k, v


def _sdpa(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).to(q.dtype)


def test_sdpa_setting_is_plain_sdpa():
    q, k, v = _qkv(torch.float32)
    assert torch.equal(ab.attend(q, k, v, backend="sdpa"), F.scaled_dot_product_attention(q, k, v))
    assert torch.equal(ab.attend(q, k, v), F.scaled_dot_product_attention(q, k, v))  # "auto" on CPU


@pytest.mark.parametrize("installed, expected", [(("sage", "flash"), "flash"), (("flash",), "flash"),
                                                 (("sage",), "sdpa"), ((), "sdpa")])
def test_auto_prefers_exact_flash_then_sdpa_and_never_sage(kernels, monkeypatch, installed, expected):
    for kind, name in ab.KERNEL_MODULES.items():
        if kind not in installed:
            monkeypatch.setitem(sys.modules, name, None)  # blocked: import fails
    q, k, v = _qkv()
    with ab.recording() as used:
        out = ab.attend(q, k, v)
    assert dict(used) == {expected: 1}
    assert [c[0] for c in kernels] == ([] if expected == "sdpa" else [expected])
    assert out.shape == (B, H, LQ, D) and out.dtype == q.dtype
    assert (out.float() - _sdpa(q, k, v).float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("kind", ["sage", "flash"])
def test_explicit_kernel_gets_its_layout_and_returns_sdpas_result(kernels, kind):
    q, k, v = _qkv(seed=3)
    with ab.use(kind):
        out = ab.attend(q, k, v)
    assert ab.current() == "auto"  # the setting ends with its block
    want = (B, H, LQ, D) if kind == "sage" else (B, LQ, H, D)
    assert kernels == [(kind, want, want[:1] + ((H, LK) if kind == "sage" else (LK, H)) + (D,))]
    assert (out.float() - _sdpa(q, k, v).float()).abs().max().item() < 2e-2


def test_non_contiguous_head_major_views_reach_flash_with_unit_stride(kernels):
    q, k, v = (x.transpose(-1, -2).contiguous().transpose(-1, -2) for x in _qkv())  # stride(-1) != 1
    assert q.stride(-1) != 1
    out = ab.attend(q, k, v, backend="flash")
    assert (out.float() - _sdpa(q, k, v).float()).abs().max().item() < 2e-2


@pytest.mark.parametrize("kind", ["sage", "flash"])
def test_inputs_a_kernel_cannot_take(kernels, kind):
    q, k, v = _qkv()
    mask = torch.rand(LQ, LK, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[:, 0] = True
    cases = [((q, k, v, mask), "mask"), ((q.float(), k.float(), v.float(), None), "float16 or bfloat16")]
    for (qq, kk, vv, m), words in cases:
        with pytest.raises(SpecError, match=words) as err:
            ab.attend(qq, kk, vv, m, backend=kind)
        assert err.value.field == "attention" and "'auto'" in str(err.value)
        with ab.recording() as used:
            out = ab.attend(qq, kk, vv, m)  # auto: SDPA, the result SDPA's own
        assert dict(used) == {"sdpa": 1}
        assert torch.equal(out, F.scaled_dot_product_attention(qq, kk, vv, attn_mask=m))
    assert kernels == []


def test_missing_kernel_and_cpu_tensors(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)
    q, k, v = _qkv()
    with pytest.raises(SpecError, match="flash_attn package is not installed"):
        ab.attend(q, k, v, backend="flash")
    assert ab.available()["flash"] is False and ab.available()["sdpa"] is True
    monkeypatch.setitem(sys.modules, "sageattention", _fake_sage(Calls()))
    with pytest.raises(SpecError, match="CUDA only"):  # installed, but the tensors are on the CPU
        ab.attend(q, k, v, backend="sage")
    assert ab.resolve("auto", q, k, v) == "sdpa"


def test_auto_falls_back_once_when_a_kernel_fails(kernels, monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash(Calls(), fail=True))
    q, k, v = _qkv()
    with pytest.raises(RuntimeError, match="no kernel image"):
        ab.attend(q, k, v, backend="flash")  # asked for by name: the error is the user's to see
    with pytest.warns(RuntimeWarning, match="'flash' failed"):
        out = ab.attend(q, k, v)
    assert (out.float() - _sdpa(q, k, v).float()).abs().max().item() < 2e-2
    assert ab.resolve("auto", q, k, v) == "sdpa"  # flash is skipped from then on


def test_unknown_names_are_refused():
    with pytest.raises(SpecError, match="choose one of auto, sdpa, sage, flash"):
        ab.attend(*_qkv(), backend="xformers")
    with pytest.raises(SpecError, match="attention"):
        SamplerConfig(attention="Flash")
    with pytest.raises(SpecError):
        with ab.use("fast"):
            pass


def test_sampler_setting_reaches_the_models_self_attention(kernels):
    """SamplerConfig.attention travels to every self-attention call of the causal model (and only there: the
    cross-attention stays on SDPA), and does not leak out of the generator between chunks."""
    torch.manual_seed(0)
    model = CausalWanModel(get_preset("tiny")).eval().to(torch.bfloat16)
    kernels.heads = model.cfg.num_heads
    ctx = [torch.randn(1, 4, model.cfg.text_dim)]

    def run(attention: str):
        cfg = SamplerConfig(denoising_steps=(1000.0, 500.0), attention=attention)
        stream = generate(model, RollingCache(model.cfg.num_layers, 6, 3), ctx, ScenePlan.single(2),
                          latent_shape=(16, 4, 4), seed=0, config=cfg)
        outs = []
        for res in stream:
            assert ab.current() == "auto"  # between chunks the caller's own setting is in force
            outs.append(res.latents)
        return torch.cat(outs, dim=2)

    with ab.recording() as used:
        flash = run("flash")
    calls = 2 * 3 * model.cfg.num_layers  # chunks x (2 steps + commit) x layers
    assert dict(used) == {"flash": calls} and len(kernels) == calls
    kernels.clear()
    with ab.recording() as used:
        sdpa = run("sdpa")
    assert dict(used) == {"sdpa": calls} and kernels == []
    assert (flash - sdpa).abs().max().item() < 0.1 * sdpa.abs().max().item()
    assert torch.isfinite(flash).all()
