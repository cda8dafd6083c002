"""The settings of a batch: everything a task's output depends on besides its prompt line and seed.

Workers receive them as one frozen, picklable object and build their model from it. The fingerprint goes into
every manifest record and into DIR/batch.json, so a rerun in the same folder knows whether an earlier output was
made under the same settings. Paths (checkpoint, text embeddings, toy weights) must be readable at the same path on
every worker.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from echo_core.errors import InputError
from echo_core.timeline import OFFICIAL_TOTAL_LATENT_FRAMES

PRESETS = ("tiny-random", "1.3b-random")
TOY = "toy"
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class BatchSettings:
    model: str  # "toy" (the bundled demo model), a preset name, or "checkpoint"
    model_id: str  # what identifies the weights: the toy files' digest, the preset, or file name + size
    checkpoint: str | None = None
    weights: str | None = None  # toy weights folder (None: the bundled weights)
    text_embeds: str | None = None  # folder of line-NNNN.safetensors, each in generate's --text-embeds format
    memory: str = "echo"
    memory_config: str | None = None  # EchoConfig JSON text (read once by the driver, not by every worker)
    steps: tuple[float, ...] | None = None  # None: the toy model's own schedule / generate's default
    height: int | None = None
    width: int | None = None
    frames_per_chunk: int | None = None
    dtype: str = "fp32"
    device: str = "auto"  # "auto": CUDA where the worker has a GPU, else CPU
    total_latent_frames: int = OFFICIAL_TOTAL_LATENT_FRAMES
    video_scale: int = 4  # toy model: nearest-neighbour upscaling of the written MP4
    # torch's CPU threads in every worker: CPU matmuls sum in a thread-count-dependent order (the toy model's
    # multi-scene videos differ between 1 and 2 threads), so it is a setting like any other, not the machine's
    cpu_threads: int = 1
    base_seed: int = 0

    @property
    def is_toy(self) -> bool:
        return self.model == TOY

    @property
    def has_decoder(self) -> bool:
        return self.is_toy  # the Wan VAE is not part of echo_core; real models give latents only

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = None if self.steps is None else list(self.steps)
        return d

    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """'key: this vs other' for every setting that differs from a stored `to_dict()`."""
        mine = self.to_dict()
        keys = sorted(set(mine) | set(other))
        return [f"{k}: {mine.get(k)!r} here, {other.get(k)!r} there" for k in keys if mine.get(k) != other.get(k)]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def toy_model_id(weights: str | None) -> str:
    """Digest of the toy model's files (5 MB): retrained weights are another model."""
    from echo_core.toy.loader import ASSETS_FILE, DIT_FILE, WEIGHTS_DIR

    folder = Path(weights) if weights else WEIGHTS_DIR
    try:
        parts = [file_digest(folder / name) for name in (DIT_FILE, ASSETS_FILE)]
    except FileNotFoundError as e:
        raise InputError("--weights", f"toy model weights not found: {e.filename}") from None
    return "toy:" + hashlib.sha256("".join(parts).encode()).hexdigest()[:16]


def checkpoint_model_id(path: Path) -> str:
    """Name and size: hashing a 5-GB checkpoint on every start would cost more than it protects against."""
    if not path.is_file():
        raise InputError("--checkpoint", f"file not found: {path}")
    return f"checkpoint:{path.name}:{path.stat().st_size}"


def resolve_device(device: str) -> str:
    """The device a worker runs on; "auto" is decided on the worker itself (a Ray worker may have a GPU the driver
    lacks)."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def text_embeds_file(settings: BatchSettings, line: int) -> Path | None:
    from echo_core.batch.tasks import task_name

    return None if settings.text_embeds is None else Path(settings.text_embeds) / f"{task_name(line)}.safetensors"
