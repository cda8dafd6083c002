"""A deterministic stand-in for umT5 text embeddings, for random-weight runs and tests.

Each word maps to a fixed pseudo-random vector (seeded by a hash of the word), so equal prompts give equal
embeddings, prompts sharing words are similar, and nothing has to be downloaded. Real runs use umT5 (ComfyUI)
or a precomputed embedding file.
"""

from __future__ import annotations

import hashlib
import re

import torch

_WORD = re.compile(r"[A-Za-z0-9']+")


def _word_vector(word: str, dim: int) -> torch.Tensor:
    seed = int.from_bytes(hashlib.sha256(word.lower().encode()).digest()[:8], "little")
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


def standin_embedding(prompt: str, text_dim: int, max_len: int = 512) -> torch.Tensor:
    """[1, max_len, text_dim]: one row per word (zero rows as padding), like a padded encoder output."""
    words = _WORD.findall(prompt)[:max_len]
    out = torch.zeros(1, max_len, text_dim)
    for i, word in enumerate(words):
        out[0, i] = _word_vector(word, text_dim)
    return out
