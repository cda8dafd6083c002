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
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory, not a weights file; give the .safetensors or .pt file in it")
    if not p.is_file():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: the file is empty (0 bytes); the download did not finish - download it again")
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
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < p.stat().st_size:
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
    renamed = p.suffix.lower() in _SAFETENSORS_SUFFIXES
    named = " (a PyTorch pickle under a .safetensors name)" if renamed else ""
    # mmap needs the zip format; legacy pickles load without it. torch.load hands a path ending in .safetensors
    # to the safetensors reader, so such a file is given as an open file (no mmap).
    for mmap in (False,) if renamed else (True, False):
        try:
            if mmap:
                return torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
            with open(p, "rb") as f:
                return torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            names = _unsafe_globals(p) or _globals_in_message(msg)
            if names:  # the pickle names a callable or class torch refuses to build: it would run code
                raise UnsafeCheckpointError(
                    f"{p}: contains code (a pickle with {', '.join(f'`{n}`' for n in names[:4])}){named}, not "
                    "loaded (refused; nothing in the file was run). Only tensors and plain containers are read "
                    "from .pt files: use a .safetensors copy of the weights from a source you trust") from None
            last_error = RuntimeError(_unpickler_reason(msg))  # bad opcodes: garbage bytes, not a pickle
        except MemoryError as e:
            last_error = e
        except Exception as e:  # what garbage bytes make the unpickler raise (RuntimeError, EOFError, KeyError...)
            last_error = e
    raise CheckpointError(
        f"{p}: cannot read the torch checkpoint{named} ({_first_lines(str(last_error))}); it is probably "
        "truncated or corrupted - download it again") from None


# Globals a weights-only load builds (torch's rebuild helpers, dtypes, OrderedDict): not code.
_SAFE_PREFIXES = ("torch._utils.", "torch.serialization.", "torch._tensor.", "torch.storage.", "torch.nn.parameter.")
_SAFE_NAMES = {"collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.bytearray",
               "_codecs.encode", "torch.Size", "torch.device", "torch.dtype", "builtins.slice", "builtins.complex",
               "numpy.core.multiarray._reconstruct", "numpy.dtype", "numpy.ndarray"}


def _unsafe_globals(p: Path) -> list[str]:
    """Module.name of every global a pickle in `p` refers to, other than those a weights-only load may build.
    Read with pickletools (nothing is executed): the zip container's data.pkl, or the legacy file's pickles."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                if member is None or z.getinfo(member).file_size > 64 * 2**20:
                    return []
                streams = [z.read(member)]
        else:
            if p.stat().st_size > 256 * 2**20:  # legacy pickles hold their tensors after the pickles; read a head
                with open(p, "rb") as f:
                    streams = [f.read(256 * 2**20)]
            else:
                streams = [p.read_bytes()]
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return []
    found: list[str] = []
    import io

    for data in streams:
        stream = io.BytesIO(data)
        for _ in range(8):  # legacy format: magic, protocol, sys info, the object, storage keys
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(stream):
                    if op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                        found.append(".".join(arg.split(" ", 1)))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
            except Exception:  # garbage or the end of the pickles: what was read so far is what counts
                break
            if stream.tell() >= len(data):
                break
    return [n for n in dict.fromkeys(_python3_name(n) for n in found) if not _safe_global(n)]


def _python3_name(name: str) -> str:
    """Protocol-2 pickles spell some globals the Python 2 way (__builtin__.exec, commands.Popen); the unpickler
    maps them back - so do we, to name what would run."""
    import _compat_pickle

    module, _, attr = name.rpartition(".")
    if (module, attr) in _compat_pickle.NAME_MAPPING:
        module, attr = _compat_pickle.NAME_MAPPING[(module, attr)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{attr}"


def _safe_global(name: str) -> bool:
    if name in _SAFE_NAMES or name.startswith(_SAFE_PREFIXES):
        return True
    head, _, attr = name.partition(".")
    # storage classes and dtypes of the legacy format: torch.FloatStorage, torch.bfloat16
    return head == "torch" and "." not in attr and (attr.endswith("Storage") or
                                                     isinstance(getattr(torch, attr, None), torch.dtype))


def _globals_in_message(msg: str) -> list[str]:
    """Names torch quotes when it refuses a global ("Unsupported global: GLOBAL x.y", "unsupported GLOBAL x.y")."""
    import re

    if not re.search(r"(?i)\bglobal\b", msg):
        return []
    return list(dict.fromkeys(re.findall(r"(?i)GLOBAL\s+([A-Za-z_][\w.]*)", msg))) or ["an unknown global"]


def _unpickler_reason(msg: str) -> str:
    if "WeightsUnpickler error:" not in msg:
        return _first_lines(msg)
    reason = msg.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0]
    return _first_lines(reason.split(". Please use")[0])


def _first_lines(msg: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in msg.strip().splitlines() if ln.strip()]
    return " ".join(lines[:n])[:400]
