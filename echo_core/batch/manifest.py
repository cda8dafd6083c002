"""DIR/manifest.jsonl: one JSON object per task outcome, appended as each task ends (flushed and synced), so a
crash loses at most the record being written. Reading keeps the last record per line and skips a torn last line.
A run that ends (done or interrupted) rewrites the file atomically with one record per task, in line order.

A record: line (1-based), prompt, seed, status ("ok" / "failed"), error, outputs ({kind: path relative to DIR}),
files ({path: bytes, sha256[, shape]}), seconds, peak_bytes, peak_device_bytes, attempts, worker, device,
settings (the settings' fingerprint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from echo_core.batch.outputs import check_file, write_bytes_atomic
from echo_core.batch.tasks import BatchTask

MANIFEST = "manifest.jsonl"
OK, FAILED = "ok", "failed"


class Manifest:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / MANIFEST

    def load(self) -> dict[int, dict[str, Any]]:
        """Last record per line. Lines that are not JSON objects (a record torn by a kill) are skipped."""
        records: dict[int, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        for text in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                records[record["line"]] = record
        return records

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, sort_keys=True) + "\n").encode()
        with open(self.path, "ab") as f:
            if f.tell() > 0 and not self._ends_with_newline():
                f.write(b"\n")  # a torn record stays on its own line, skipped when read
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def compact(self, records: Iterable[dict[str, Any]]) -> None:
        """Replace the file by `records` (one per task), in line order."""
        lines = [json.dumps(r, sort_keys=True) + "\n" for r in sorted(records, key=lambda r: r["line"])]
        write_bytes_atomic(self.path, "".join(lines).encode())


def incomplete_reason(record: dict[str, Any] | None, task: BatchTask, fingerprint: str, folder: Path) -> str | None:
    """None when `record` is a success of this very task whose every output is still whole; else why not."""
    if record is None:
        return "not run yet"
    if record.get("status") != OK:
        return f"last attempt {record.get('status')}"
    for key, want in (("prompt", task.text), ("seed", task.seed), ("settings", fingerprint)):
        if record.get(key) != want:
            return f"{key} changed"
    files = record.get("files") or {}
    if not files or set(files) != set((record.get("outputs") or {}).values()):
        return "the record lists no outputs"
    for rel, entry in sorted(files.items()):
        problem = check_file(folder / rel, entry)
        if problem:
            return f"{rel}: {problem}"
    return None
