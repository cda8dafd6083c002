"""Write a Wan DiT state dict as a GGUF file that ComfyUI-GGUF's UnetLoaderGGUF reads (tests only).

Which tensors stay unquantised follows what ComfyUI-GGUF's converter does for Wan (facts from its tools/convert.py,
code our own): 1-D tensors (biases, norms), tensors of at most 1024 elements and the `.modulation` parameters are
float32; the 5-D patch embedding (GGUF holds at most 4 dimensions) is float32 flattened to 2-D, its real shape in
the `comfy.gguf.orig_shape.<name>` metadata the loader reads back. Every other tensor is quantised to the chosen
type (Q8_0, Q4_0, ...). `write_gguf` also returns the dequantised weights, so a test can write the same weights as
safetensors and compare the two runs.

Dequantised how: gguf's own dequantiser computes scale x quant in float32 (exact for Q8_0 / Q4_0), which is what
ComfyUI-GGUF's layers compute with `dequant_dtype` float32 (UnetLoaderGGUFAdvanced). Its default (UnetLoaderGGUF)
multiplies the float16 scale by the quant in float16, so each quantised weight is that exact value rounded to
float16; `GGUFFile.as_loaded()` gives those.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

ARCH = "wan"  # general.architecture ComfyUI-GGUF accepts for Wan DiTs
SMALL = 1024  # tensors this small stay float32
KEEP_F32 = (".modulation",)  # a bare nn.Parameter: kept in full precision


def gguf_package() -> Any:
    """PyPI's `gguf` (for this writer and for ComfyUI-GGUF imported in-process). A checkout of this repository in a
    folder named `gguf` (its __init__.py makes it a package, and pytest puts its parent on sys.path) would shadow
    the package; look past that folder then."""
    mod = sys.modules.get("gguf")
    if mod is not None and hasattr(mod, "GGUFWriter"):
        return mod
    repo_parent = Path(__file__).resolve().parents[2]
    saved = list(sys.path)
    sys.modules.pop("gguf", None)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != repo_parent]
    try:
        import gguf
    finally:
        sys.path[:] = saved
    if not hasattr(gguf, "GGUFWriter"):
        raise ImportError(f"`gguf` resolves to {gguf.__file__}, not the PyPI package; "
                          "run scripts/prepare_comfy_gguf.sh")
    return gguf


def tensor_type(name: str, shape: tuple[int, ...], qtype: Any) -> Any:
    """The GGML type `name` is stored as when the file's weights are quantised to `qtype`."""
    gguf = gguf_package()
    n = int(np.prod(shape))
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if len(shape) <= 1 or n <= SMALL or any(k in name for k in KEEP_F32) or len(shape) > 4 or shape[-1] % block:
        return gguf.GGMLQuantizationType.F32
    return qtype


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    types: dict[str, str]  # tensor name -> GGML type name it is stored as
    dequantised: dict[str, torch.Tensor]  # float32, as gguf.quants.dequantize gives them

    def as_loaded(self, dequant_dtype: torch.dtype | None = torch.float16) -> dict[str, torch.Tensor]:
        """The weights ComfyUI-GGUF's layers compute with: quantised tensors rounded to `dequant_dtype` (float16:
        UnetLoaderGGUF's default; None or float32: the exact dequantisation)."""
        if dequant_dtype in (None, torch.float32):
            return dict(self.dequantised)
        return {k: v.to(dequant_dtype).float() if self.types[k] != "F32" else v for k, v in self.dequantised.items()}


def write_gguf(state_dict: Mapping[str, torch.Tensor], path: Path | str, qtype_name: str) -> GGUFFile:
    """Write `state_dict` (Wan key names, no prefix) to `path` with its large weights in `qtype_name` (e.g. "Q8_0",
    "Q4_0"). Raises ValueError for a type gguf cannot quantise to in Python (e.g. the K-quants)."""
    gguf = gguf_package()

    try:
        qtype = gguf.GGMLQuantizationType[qtype_name]
    except KeyError:
        raise ValueError(f"qtype_name: unknown GGML type {qtype_name!r}") from None
    writer = gguf.GGUFWriter(path=None, arch=ARCH)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    dequantised: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    for name, tensor in state_dict.items():
        data = tensor.detach().to(torch.float32).contiguous().numpy()
        shape = data.shape
        if data.ndim > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", [int(s) for s in shape])
            data = data.reshape(shape[0], -1)
        ttype = tensor_type(name, shape, qtype)
        try:
            packed = gguf.quants.quantize(data, ttype)
        except NotImplementedError:
            raise ValueError(f"qtype_name: gguf cannot quantise to {qtype_name} in Python; use Q8_0, Q4_0, Q4_1, "
                             "Q5_0 or Q5_1") from None
        writer.add_tensor(name, packed, raw_dtype=ttype)
        types[name] = ttype.name
        back = gguf.quants.dequantize(packed, ttype).reshape(shape)
        dequantised[name] = torch.from_numpy(np.ascontiguousarray(back, dtype=np.float32))
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(Path(path), types, dequantised)


def stored_types(path: Path | str) -> dict[str, str]:
    """{tensor name: GGML type name} as the file holds them (read back with gguf's reader)."""
    gguf = gguf_package()

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}
