"""Writing a task's outputs atomically and checking later that they are still what the manifest says.

Every file is written to a temporary name beside its target and renamed into place (safetensors through
`echo_core.safetensors_out.write_safetensors`), so a reader, or a rerun after a crash, sees a whole file or none.
A file counts as complete when its size and SHA-256 match its manifest entry and, for safetensors, its header
reads back with the recorded tensor shape.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from echo_core.batch.settings import file_digest
from echo_core.safetensors_out import write_bytes_atomic

PARTIAL = ".partial"  # every temporary name carries it (write_safetensors: ".NAME.PID.partial")


def write_json_atomic(path: Path, value: Any) -> None:
    write_bytes_atomic(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def remove_partials(folder: Path) -> list[Path]:
    """Temporary files a killed process left behind (never a complete output: those are renamed)."""
    found = [p for p in folder.rglob(f"*{PARTIAL}*") if p.is_file()]
    for p in found:
        p.unlink()
    return found


def safetensors_header(path: Path) -> dict[str, Any]:
    """The header of a safetensors file, checked against the file's size (a truncated file fails)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError("header length runs past the end of the file")
        header = json.loads(f.read(n))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"data ends at byte {8 + n + end}, the file has {size}")
    return header


def describe_file(path: Path, shape: list[int] | None = None) -> dict[str, Any]:
    """The manifest's entry for a written file."""
    entry: dict[str, Any] = {"bytes": path.stat().st_size, "sha256": file_digest(path)}
    if shape is not None:
        entry["shape"] = list(shape)
    return entry


def check_file(path: Path, entry: dict[str, Any]) -> str | None:
    """None when `path` matches its manifest entry, else what is wrong."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != entry.get("bytes"):
        return f"{path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
    if path.suffix == ".safetensors":
        try:
            header = safetensors_header(path)
        except (ValueError, OSError) as e:
            return f"unreadable safetensors ({e})"
        shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__"}
        if "shape" in entry and entry["shape"] not in shapes.values():
            return f"tensor shapes {shapes}, the manifest says {entry['shape']}"
    if file_digest(path) != entry.get("sha256"):
        return "contents differ from the manifest's SHA-256"
    return None
