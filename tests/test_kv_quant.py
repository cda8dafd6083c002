"""fp8 KV primitives (echo_core.cache.kv_quant): the setting, the error bound, scale shapes and the buffer."""

from __future__ import annotations

import pytest
import torch

from echo_core.cache import kv_quant as kq
from echo_core.errors import ConfigError

FP8 = torch.float8_e4m3fn


def _kv(b=1, h=3, n=40, d=16, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # rows of very different magnitudes: per-token scales must follow each row, not the tensor's maximum
    mag = torch.logspace(-3, 2, n)[None, None, :, None]
    return torch.randn(b, h, n, d, generator=g) * mag


def test_this_torch_casts_float8_on_cpu():
    x = torch.tensor([1.0, -2.5, 448.0])
    assert torch.equal(x.to(FP8).to(torch.float32), x)
    assert kq.storage_dtype("float8_e4m3fn", "cpu") is FP8
    assert kq.storage_dtype("model", "cpu") is None


@pytest.mark.parametrize("bad", ["fp8", "float8_e5m2", "bf16", "", None, 8])
def test_unknown_kv_dtype_names_the_field_and_the_choices(bad):
    with pytest.raises(ConfigError) as e:
        kq.check_kv_dtype(bad, field="memory.kv_dtype")
    assert e.value.field == "memory.kv_dtype"
    assert "float8_e4m3fn" in e.value.detail and "model" in e.value.detail


def test_torch_without_float8_is_a_config_error(monkeypatch):
    monkeypatch.delattr(torch, "float8_e4m3fn")
    with pytest.raises(ConfigError) as e:
        kq.storage_dtype("float8_e4m3fn")
    assert e.value.field == "kv_dtype" and "'model'" in e.value.detail


def test_device_without_float8_is_a_config_error(monkeypatch):
    monkeypatch.setattr(kq, "_device_casts_fp8", lambda device_type: device_type != "cpu")
    with pytest.raises(ConfigError) as e:
        kq.storage_dtype("float8_e4m3fn", "cpu")
    assert e.value.field == "kv_dtype" and "cpu device" in e.value.detail


def test_scales_are_one_float32_per_token_per_head():
    x = _kv(b=2, h=3, n=7, d=16)
    q, s = kq.quantize(x)
    assert q.dtype == FP8 and q.shape == x.shape
    assert s.dtype == torch.float32 and s.shape == (2, 3, 7)
    # the row's largest magnitude lands on the e4m3 maximum
    assert torch.allclose(q.float().abs().amax(-1), torch.full((2, 3, 7), 448.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_error_within_e4m3_bound(dtype):
    x = _kv().to(dtype)
    q, s = kq.quantize(x)
    back = kq.dequantize(q, s, dtype)
    assert back.dtype == dtype
    err = (back.float() - x.float()).abs()
    amax = x.float().abs().amax(-1, keepdim=True)
    # e4m3 keeps 3 mantissa bits: round-to-nearest is within 2**-4 of the value, at most 2**-4 * amax per row
    # (subnormals below 2**-6 * scale have a fixed step of 2**-9 * scale, inside the same bound); plus the
    # target dtype's own rounding of the result
    own = {torch.float32: 0.0, torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    assert bool((err <= amax * (2**-4 + own) + 1e-30).all())
    rel = err / x.float().abs().clamp_min(1e-30)
    normal = x.float().abs() >= amax * 2**-6  # values in e4m3's normal range relative to the row's scale
    assert float(rel[normal].max()) <= 2**-4 + 2 * own + 1e-6
    assert float(err.mean() / x.float().abs().mean()) < 0.03


def test_zero_rows_quantise_to_zero_not_nan():
    x = torch.zeros(1, 2, 3, 8)
    q, s = kq.quantize(x)
    back = kq.dequantize(q, s, torch.float32)
    assert torch.equal(back, x)


def test_out_of_range_values_are_clamped_not_inf():
    x = torch.tensor([[[[1e30, -1e30, 1.0, 0.0]]]])
    q, s = kq.quantize(x)
    assert bool(torch.isfinite(kq.dequantize(q, s, torch.float32)).all())


def test_model_buffer_reads_are_views_of_the_exact_rows():
    x = _kv(n=10).to(torch.bfloat16)
    buf = kq.KVBuffer((1, 3, 16, 16), torch.bfloat16, "cpu")
    buf.write(2, x)
    out = buf.read(12)
    assert out.data_ptr() == buf.data.data_ptr()  # a view: the model-dtype path copies nothing
    assert torch.equal(out[:, :, 2:], x)
    assert buf.nbytes() == 16 * 3 * 16 * 2


def test_fp8_buffer_writes_quantised_rows_and_reads_the_span_dequantised():
    x = _kv(n=10).to(torch.bfloat16)
    buf = kq.KVBuffer((1, 3, 16, 16), torch.bfloat16, "cpu", "float8_e4m3fn")
    assert buf.data.dtype == FP8 and buf.scale.shape == (1, 3, 16)
    buf.write(4, x)
    out = buf.read(14, start=4)
    q, s = kq.quantize(x)
    assert out.dtype == torch.bfloat16 and torch.equal(out, kq.dequantize(q, s, torch.bfloat16))
    assert buf.nbytes() == 16 * 3 * 16 * 1 + 16 * 3 * 4
    assert buf.nbytes() == pytest.approx(16 * 3 * 16 * kq.element_bytes("float8_e4m3fn", 2, 16))


def test_take_and_put_move_values_with_their_scales():
    x = _kv(n=8)
    buf = kq.KVBuffer((1, 3, 8, 16), torch.float32, "cpu", "float8_e4m3fn")
    buf.write(0, x)
    before = buf.read(8)
    buf.put(0, buf.take(torch.tensor([5, 6, 7])))
    assert torch.equal(buf.read(3), before[:, :, 5:8])


def test_grown_keeps_rows():
    for kv_dtype in kq.KV_DTYPES:
        buf = kq.KVBuffer((1, 3, 4, 16), torch.float32, "cpu", kv_dtype)
        buf.write(0, _kv(n=4))
        big = buf.grown(9)
        assert big.capacity == 9 and torch.equal(big.read(4), buf.read(4))


def test_element_bytes():
    assert kq.element_bytes("model", 2, 128) == 2
    assert kq.element_bytes("float8_e4m3fn", 2, 128) == 1 + 4 / 128
    with pytest.raises(ConfigError):
        kq.element_bytes("int8", 2, 128)
