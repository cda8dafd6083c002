"""The toy model's text encoder: prompts of the toy grammar -> [text_len, text_dim] rows shaped like umT5's output.

It is a fixed table, not a trained network: row i of a prompt is word(w_i) + role(r_i) + position(i), where the
role says which part of the sentence the word belongs to (first object, second object, background: words after
the last "on" describe the background, "and" starts the second object). Tables are drawn once from a seeded
generator and shipped with the weights; the DiT's text-embedding MLP and cross-attention learn to read them.
Rows past the last word are zero, as Wan pads umT5's output.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Sequence

import torch

from echo_core.errors import quote
from echo_core.toy.grammar import VOCAB

TEXT_DIM = 64
TEXT_LEN = 24
ROLES = ("object1", "object2", "background")
_WORD = re.compile(r"[a-z]+")


def prompt_words(prompt: str) -> list[str]:
    return _WORD.findall(prompt.lower())


def word_roles(words: Sequence[str]) -> list[int]:
    """Role index of every word: 2 after the last "on" (background), else 0/1 = object before/after an "and"."""
    cut = len(words) - 1 - list(words)[::-1].index("on") if "on" in words else len(words)
    roles, obj = [], 0
    for i, w in enumerate(words):
        if i >= cut:
            roles.append(2)
        else:
            if w == "and":
                obj = 1
            roles.append(obj)
    return roles


@dataclass
class ToyTextEncoder:
    vocab: tuple[str, ...]
    word: torch.Tensor  # [V, D]
    role: torch.Tensor  # [len(ROLES), D]
    position: torch.Tensor  # [text_len, D]

    @classmethod
    def create(cls, seed: int = 0, vocab: Sequence[str] = VOCAB, text_dim: int = TEXT_DIM,
               text_len: int = TEXT_LEN) -> "ToyTextEncoder":
        g = torch.Generator().manual_seed(int(seed))
        scale = text_dim ** -0.5  # unit-norm rows on average
        word = torch.randn(len(vocab), text_dim, generator=g) * scale
        role = torch.randn(len(ROLES), text_dim, generator=g) * scale
        position = torch.randn(text_len, text_dim, generator=g) * (0.5 * scale)
        return cls(tuple(vocab), word, role, position)

    @property
    def text_dim(self) -> int:
        return int(self.word.shape[1])

    @property
    def text_len(self) -> int:
        return int(self.position.shape[0])

    def encode(self, prompt: str, *, strict: bool = True) -> torch.Tensor:
        """[text_len, text_dim]. strict=False skips words outside the vocabulary (e.g. for routing features)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
        words = prompt_words(prompt)
        unknown = [w for w in words if w not in self.vocab]
        if unknown and strict:
            raise ValueError(f"the toy text encoder does not know the word {quote(unknown[0], 60)} in prompt "
                             f"{quote(prompt, 120)}; write prompts from the toy grammar's words: "
                             f"{', '.join(self.vocab)}")
        words = [w for w in words if w in self.vocab]
        if strict and not words:
            raise ValueError(f"prompt {quote(prompt, 120)} has no word the toy text encoder knows, so the model would "
                             f"see an empty prompt; write prompts from its words: {', '.join(self.vocab)}")
        if len(words) > self.text_len:
            raise ValueError(f"prompt {quote(prompt, 120)} has {len(words)} words; the toy text encoder reads at "
                             f"most {self.text_len} - shorten it")
        out = torch.zeros(self.text_len, self.text_dim)
        index = {w: i for i, w in enumerate(self.vocab)}
        for i, (w, r) in enumerate(zip(words, word_roles(words))):
            out[i] = self.word[index[w]] + self.role[r] + self.position[i]
        return out

    def encode_prompts(self, prompts: Sequence[str], strict: bool = True) -> list[torch.Tensor]:
        """[1, text_len, text_dim] per prompt: the text-encoder interface the timeline nodes call."""
        return [self.encode(p, strict=strict)[None] for p in prompts]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"text.word": self.word, "text.role": self.role, "text.position": self.position}

    def metadata(self) -> dict[str, str]:
        return {"toy.text_vocab": json.dumps(list(self.vocab))}

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> "ToyTextEncoder":
        missing = [k for k in ("text.word", "text.role", "text.position") if k not in sd]
        if missing or "toy.text_vocab" not in metadata:
            raise ValueError("toy text-encoder weights are incomplete (missing "
                             f"{', '.join(missing) or 'toy.text_vocab metadata'}); restore echo_core/toy/weights/")
        vocab = tuple(json.loads(metadata["toy.text_vocab"]))
        if len(vocab) != sd["text.word"].shape[0]:
            raise ValueError(f"toy text encoder: vocabulary of {len(vocab)} words but {sd['text.word'].shape[0]} "
                             "word rows; the weights file is inconsistent")
        return cls(vocab, sd["text.word"].float(), sd["text.role"].float(), sd["text.position"].float())
