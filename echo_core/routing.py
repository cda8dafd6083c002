"""Scene routing for recall transitions: which finished scene to bring back, and how far to jump in RoPE time.

Restates spec §7 (official `_compute_recall_prompt_features`, `_select_scene_pool_entry`,
`_manual_recall_scene_index`, `_compute_similarity_rope_jump`). Two feature kinds:

* "similarity" (official default `Similar`, §7.1): text-encoder embeddings of the prompts with the tokens common
  to most scenes removed, mean-pooled over non-padding rows, L2-normalised;
* "idf" (§7.2): TF-IDF vectors of the prompts.

Our option, off by default (spec §11 item 12): a similarity `threshold` below which nothing is recalled.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .timeline import Timeline

__all__ = [
    "STOP_WORDS",
    "RecallRouter",
    "RoutingDecision",
    "filter_common_tokens",
    "idf_features",
    "pooled_embedding",
    "route_recall",
    "similarity_rope_jump",
    "tokenize",
]

# §7: the official stop-word list (43 words).
STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "back", "be", "been", "before", "by", "for", "from", "has", "have",
    "he", "her", "his", "in", "into", "is", "it", "its", "of", "on", "or", "over", "same", "she", "shot",
    "static", "the", "their", "them", "this", "to", "under", "while", "with", "wearing", "young", "now",
    "seen",
))
_WORD = re.compile(r"[a-z][a-z']+")

Encoder = Callable[[list[str]], Sequence[torch.Tensor]]


def tokenize(text: str) -> list[str]:
    """§7 shared tokenizer: lowercase, words `[a-zA-Z][a-zA-Z']+`, length > 2, stop words dropped."""
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in STOP_WORDS]


def idf_features(prompts: Sequence[str]) -> torch.Tensor:
    """§7.2 TF-IDF over the prompts of one timeline -> float32 `[N, V]`, rows L2-normalised.

    Vocabulary = sorted token set; `tf = 1 + ln(count)`, `idf = ln((1 + N) / (1 + df)) + 1`.
    A prompt without any token gets a zero row (similarity 0 with everything).
    """
    docs = [Counter(tokenize(p)) for p in prompts]
    vocab = sorted(set().union(*docs)) if docs else []
    col = {w: j for j, w in enumerate(vocab)}
    df = Counter(w for d in docs for w in d)
    n = len(docs)
    out = torch.zeros(n, len(vocab), dtype=torch.float64)
    for i, d in enumerate(docs):
        for w, c in d.items():
            out[i, col[w]] = (1.0 + math.log(c)) * (math.log((1 + n) / (1 + df[w])) + 1.0)
    norms = out.norm(dim=1, keepdim=True)
    return (out / norms.clamp_min(1e-12)).to(torch.float32)


def filter_common_tokens(prompts: Sequence[str]) -> list[str]:
    """§7.1 steps 1-2: drop tokens found in `>= max(2, int(0.7 N + 0.999))` prompts; join the rest with spaces.

    A prompt left with no token falls back to its original text.
    """
    tokens = [tokenize(p) for p in prompts]
    df = Counter(w for t in tokens for w in set(t))
    limit = max(2, int(0.7 * len(prompts) + 0.999))
    out = []
    for prompt, toks in zip(prompts, tokens):
        kept = [w for w in toks if df[w] < limit]
        out.append(" ".join(kept) if kept else prompt)
    return out


def pooled_embedding(emb: torch.Tensor) -> torch.Tensor:
    """§7.1 step 3: mean over the non-zero rows of `[L, D]` (or `[1, L, D]`), L2-normalised, float32 on CPU.

    Rows that are exactly zero are padding (the official encoder zero-pads to 512 tokens). An all-zero input
    gives a zero vector.
    """
    if emb.dim() == 3 and emb.shape[0] == 1:
        emb = emb[0]
    if emb.dim() != 2:
        raise ValueError(f"pooled_embedding expects [L, D] or [1, L, D], got shape {tuple(emb.shape)}")
    x = emb.detach().to("cpu", torch.float32)
    keep = x.abs().sum(dim=-1) > 0
    if not bool(keep.any()):
        return torch.zeros(x.shape[-1], dtype=torch.float32)
    mean = x[keep].mean(dim=0)
    return mean / mean.norm().clamp_min(1e-12)


@dataclass(frozen=True)
class RoutingDecision:
    """Result of routing one recall transition.

    `scene_index` is the 0-based source scene, or None when `reason == "below_threshold"`: then nothing should be
    recalled, `score` is the best similarity found and `rope_jump` is `jump_max` (the "far" end, as for an empty
    pool). `scores` lists `(scene_index, similarity)` for every candidate, in candidate order.
    """

    scene_index: int | None
    score: float
    scores: tuple[tuple[int, float], ...]
    rope_jump: int
    reason: str  # "manual" | "idf" | "similarity" | "below_threshold"

    @property
    def matched(self) -> bool:
        return self.scene_index is not None


def similarity_rope_jump(sims: Sequence[float], selected: float | None, jump_min: int = 0,
                         jump_max: int = 6) -> int:
    """§7.3 jump: `g_e = max(0, 1 - sim_e)`, `ĝ = clamp(max(0, 1 - sim_sel) / Σg, 0, 1)` (0 if `Σg <= 1e-6`),
    `J = round(jump_min + ĝ (jump_max - jump_min))` with Python's round-half-even; `jump_max` if no candidates."""
    if not sims or selected is None:
        return jump_max
    total = sum(max(0.0, 1.0 - s) for s in sims)
    g = 0.0 if total <= 1e-6 else min(1.0, max(0.0, max(0.0, 1.0 - selected) / total))
    return round(jump_min + g * (jump_max - jump_min))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().to("cpu", torch.float32).flatten(), b.detach().to("cpu", torch.float32).flatten()
    if a.shape != b.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    # Features are already unit length; normalising again only protects hand-made inputs.
    return float(a @ b / (a.norm().clamp_min(1e-12) * b.norm().clamp_min(1e-12)))


def route_recall(query_feature: torch.Tensor, candidates: Sequence[tuple[int, torch.Tensor]], *,
                 manual: int | None = None, threshold: float | None = None, jump_min: int = 0,
                 jump_max: int = 6, method: str = "similarity") -> RoutingDecision | None:
    """§7.3 selection: the candidate with the highest cosine similarity (first on ties); `manual` (0-based scene)
    overrides it and must be among the candidates. Returns None when there are no candidates and no manual
    choice: the official code then loads no memory and jumps by `jump_max` (see `similarity_rope_jump`).

    `threshold` (ours; official has none): if the best similarity is below it, the decision has
    `scene_index=None`, `reason="below_threshold"`. A manual choice ignores the threshold. `method` only labels
    the reason of an automatic choice ("similarity" or "idf").
    """
    scores = tuple((int(idx), _cosine(query_feature, feat)) for idx, feat in candidates)
    sims = [s for _, s in scores]
    if manual is not None:
        by_scene = dict(scores)
        if manual not in by_scene:
            raise ValueError(f"manual recall of scene {manual + 1} (index {manual}) is impossible: it is not in "
                             f"the scene pool {[i + 1 for i, _ in scores]} (1-based); recall an earlier, "
                             "finished scene")
        sel = by_scene[manual]
        return RoutingDecision(manual, sel, scores, similarity_rope_jump(sims, sel, jump_min, jump_max), "manual")
    if not scores:
        return None
    best = max(range(len(sims)), key=lambda i: (sims[i], -i))  # first on ties
    idx, sel = scores[best]
    if threshold is not None and sel < threshold:
        return RoutingDecision(None, sel, scores, jump_max, "below_threshold")
    return RoutingDecision(idx, sel, scores, similarity_rope_jump(sims, sel, jump_min, jump_max), method)


class RecallRouter:
    """Per-timeline router: one feature per scene, computed lazily on the first `route` (the official code
    computes features only when some transition is a recall).

    `method`: "similarity" (also "similar", the official spelling) or "idf", case-insensitive. Unlike the official
    code, an unknown name is an error rather than a silent fallback to similarity. For "similarity", `encode`
    maps a list of prompts to one `[L, D]` (or `[1, L, D]`) embedding each.
    """

    def __init__(self, prompts: Sequence[str], method: str = "similarity", encode: Encoder | None = None, *,
                 threshold: float | None = None, jump_min: int = 0, jump_max: int = 6) -> None:
        name = method.strip().lower()
        if name not in ("similarity", "similar", "idf"):
            raise ValueError(f"routing method {method!r} is unknown; use 'similarity' or 'idf'")
        self.method = "idf" if name == "idf" else "similarity"
        if self.method == "similarity" and encode is None:
            raise ValueError("similarity routing needs an `encode` callable (list of prompts -> embeddings); "
                             "pass one or use method='idf'")
        if jump_max < jump_min:
            raise ValueError(f"jump_max ({jump_max}) must be >= jump_min ({jump_min})")
        self.prompts = tuple(prompts)
        self.encode = encode
        self.threshold, self.jump_min, self.jump_max = threshold, jump_min, jump_max
        self._features: torch.Tensor | None = None

    @classmethod
    def from_timeline(cls, timeline: Timeline, method: str = "similarity", encode: Encoder | None = None,
                      **kwargs) -> RecallRouter:
        return cls([s.prompt for s in timeline.scenes], method, encode, **kwargs)

    @property
    def features(self) -> torch.Tensor:
        """`[N, D]` float32, one unit-length (or zero) row per scene."""
        if self._features is None:
            if self.method == "idf":
                self._features = idf_features(self.prompts)
            else:
                embs = list(self.encode(filter_common_tokens(self.prompts)))  # type: ignore[misc]
                if len(embs) != len(self.prompts):
                    raise ValueError(f"encode returned {len(embs)} embeddings for {len(self.prompts)} prompts")
                self._features = torch.stack([pooled_embedding(e) for e in embs])
        return self._features

    def route(self, dest_scene: int, pool_scene_indices: Sequence[int],
              manual: int | None = None) -> RoutingDecision | None:
        """Route the recall that enters `dest_scene` (0-based) from the finished scenes in the pool."""
        n = len(self.prompts)
        for i in (dest_scene, *pool_scene_indices):
            if not 0 <= i < n:
                raise IndexError(f"scene index {i} is outside the timeline (0..{n - 1})")
        feats = self.features
        return route_recall(feats[dest_scene], [(i, feats[i]) for i in pool_scene_indices], manual=manual,
                            threshold=self.threshold, jump_min=self.jump_min, jump_max=self.jump_max,
                            method=self.method)
