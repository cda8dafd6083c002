"""Read a weights file into a plain dict, safely: safetensors, or torch pickles loaded with weights_only.

Formats are recognised by their first bytes, not only by their name, so a renamed or broken file gets an error
that says what the bytes are. Pickles that would run code are refused, never executed.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A weights file cannot be read (missing, corrupted, unsupported container)."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asks to run code or build arbitrary Python objects; it was refused, not executed."""


_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
_SAFETENSORS_SUFFIXES = (".safetensors", ".sft")


def read_weights_file(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Return (the file's top-level dict, safetensors metadata or {}). Nested dicts of .pt files are kept."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    kind = _sniff(p)
    if kind == "safetensors":
        return _read_safetensors(p), _read_safetensors_metadata(p)
    if kind == "torch":
        obj = _read_torch(p)
        if not isinstance(obj, dict):
            raise CheckpointError(
                f"{p}: the pickle holds a {type(obj).__name__}, not a dict of tensors; save the model's "
                "state_dict() instead of the module object")
        return obj, {}
    if kind == "gguf":
        raise CheckpointError(f"{p}: GGUF files are not supported by this loader; use a .safetensors or .pt file "
                              "(or ComfyUI-GGUF's loader with the stock Wan nodes)")
    raise CheckpointError(
        f"{p}: neither a safetensors file nor a torch checkpoint (first bytes {_head(p)!r}); the file is "
        "corrupted or not a model - download it again")


def _sniff(p: Path) -> str:
    head = _head(p, 16)
    if head.startswith(b"PK\x03\x04"):
        return "torch"  # torch.save zip container
    if head.startswith(b"GGUF"):
        return "gguf"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # u64 header length, then the JSON header
    if head[:1] == b"\x80":
        return "torch"  # legacy (non-zip) torch.save pickle
    suffix = p.suffix.lower()
    if suffix in _SAFETENSORS_SUFFIXES:
        return "safetensors"  # let safetensors report what is wrong with it
    if suffix in _TORCH_SUFFIXES:
        return "torch"
    return "unknown"


def _head(p: Path, n: int = 16) -> bytes:
    with open(p, "rb") as f:
        return f.read(n)


def _read_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except Exception as e:  # SafetensorError, OSError, header JSON errors
        raise CheckpointError(
            f"{p}: not a readable safetensors file ({e}); it is probably truncated or corrupted - "
            "download it again and compare its size with the source") from None


def _read_safetensors_metadata(p: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(p), framework="pt") as f:
        return dict(f.metadata() or {})


def _read_torch(p: Path) -> Any:
    last_error: Exception | None = None
    for mmap in (True, False):  # mmap needs the zip format; legacy pickles load without it
        try:
            return torch.load(str(p), map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "Unsupported global" in msg:  # a GLOBAL opcode naming a callable: the pickle would run code
                raise UnsafeCheckpointError(
                    f"{p}: the file contains code or arbitrary Python objects and was refused (not executed). "
                    f"Only plain tensors and containers are loaded ({_unpickler_reason(msg)}). "
                    "If you trust the file, re-save its state dict as .safetensors and load that instead") from None
            last_error = RuntimeError(_unpickler_reason(msg))  # bad opcodes: garbage bytes, not a pickle
        except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
                AttributeError, OverflowError, MemoryError) as e:  # what garbage bytes make the unpickler raise
            last_error = e
    raise CheckpointError(
        f"{p}: cannot read the torch checkpoint ({_first_lines(str(last_error))}); it is probably truncated "
        "or corrupted - download it again") from None


def _unpickler_reason(msg: str) -> str:
    if "WeightsUnpickler error:" not in msg:
        return _first_lines(msg)
    reason = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    return _first_lines(reason.split(". Please use")[0])


def _first_lines(msg: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return " ".join(lines[:n])[:400]
