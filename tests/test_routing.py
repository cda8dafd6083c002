"""Recall routing (spec §7): tokenizer, TF-IDF, common-token filter, pooling, selection and RoPE jump."""

from __future__ import annotations

import math

import pytest
import torch

from echo_core.routing import (
    STOP_WORDS,
    RecallRouter,
    filter_common_tokens,
    idf_features,
    pooled_embedding,
    route_recall,
    similarity_rope_jump,
    tokenize,
)
from echo_core.timeline import parse_timeline


def unit(*xs: float) -> torch.Tensor:
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def test_stop_words_and_tokenizer():
    assert len(STOP_WORDS) == 43
    assert {"wearing", "static", "seen", "now", "back"} <= STOP_WORDS
    assert tokenize("The Man's HAT, a red-ox in 3D! it's") == ["man's", "hat", "red", "it's"]


def test_idf_features_hand_computed():
    feats = idf_features(["The red ball", "a red cube, red!", "Blue ball in it"])
    # vocabulary: ball, blue, cube, red; N = 3; df(ball) = df(red) = 2, df(blue) = df(cube) = 1.
    a = 1 + math.log(4 / 3)  # idf of a token in 2 prompts
    b = 1 + math.log(2)  # idf of a token in 1 prompt
    expected = torch.tensor([
        [a, 0, 0, a],
        [0, 0, b, (1 + math.log(2)) * a],  # red appears twice: tf = 1 + ln 2
        [a, b, 0, 0],
    ], dtype=torch.float64)
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert feats.dtype == torch.float32 and feats.shape == (3, 4)
    torch.testing.assert_close(feats, expected.float())


def test_idf_prompt_without_tokens_is_a_zero_row():
    feats = idf_features(["the a an", "red ball"])
    assert torch.count_nonzero(feats[0]) == 0 and feats[1].norm() == pytest.approx(1.0)


def test_common_token_filter_at_n6():
    prompts = [
        "a cat in the garden, sunny",
        "the cat sleeps in the garden",
        "a cat chases a dog in the garden",
        "cat and dog in the garden at night",
        "the cat on the garden wall, dog barking",
        "A garden, a cat.",
    ]
    # N = 6 -> common = in >= 5 prompts: garden (6), cat (6); dog (3) stays.
    assert filter_common_tokens(prompts) == [
        "sunny", "sleeps", "chases dog", "dog night", "wall dog barking", "A garden, a cat.",
    ]


def test_common_token_limit_small_n():
    # N = 3 -> limit int(2.1 + 0.999) = 3: a token in 2 of 3 prompts is kept.
    assert filter_common_tokens(["red ball", "red cube", "blue cone"]) == ["red ball", "red cube", "blue cone"]
    assert filter_common_tokens(["red ball", "red cube", "red cone"]) == ["ball", "cube", "cone"]
    # N = 1 -> limit 2: nothing is ever common.
    assert filter_common_tokens(["red ball"]) == ["red ball"]


def test_pooled_embedding_ignores_zero_rows():
    emb = torch.tensor([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.bfloat16)
    out = pooled_embedding(emb[None])
    assert out.dtype == torch.float32 and out.shape == (2,)
    torch.testing.assert_close(out, unit(2.0, 2.0))  # mean of the 2 real rows, normalised
    assert torch.count_nonzero(pooled_embedding(torch.zeros(4, 3))) == 0
    with pytest.raises(ValueError, match="shape"):
        pooled_embedding(torch.zeros(2, 4, 3))


def _sims_candidates(sims):
    """Query e0 and candidates whose cosine with it is exactly `sims[i]` (each in its own plane)."""
    dim = len(sims) + 1
    query = torch.zeros(dim, dtype=torch.float64)
    query[0] = 1
    cands = []
    for i, s in enumerate(sims):
        v = torch.zeros(dim, dtype=torch.float64)
        v[0], v[i + 1] = s, math.sqrt(1 - s * s)
        cands.append((i, v.float()))
    return query.float(), cands


def test_jump_example_from_spec():
    q, cands = _sims_candidates([0.737, 0.102, 0.026])
    d = route_recall(q, cands)
    assert d.scene_index == 0 and d.reason == "similarity"
    assert d.score == pytest.approx(0.737, abs=1e-6)
    assert [s for _, s in d.scores] == pytest.approx([0.737, 0.102, 0.026], abs=1e-6)
    assert d.rope_jump == 1  # ĝ = 0.263 / 2.135 = 0.123 -> round(0.74) = 1
    assert similarity_rope_jump([0.737, 0.102, 0.026], 0.737) == 1


def test_single_candidate_jumps_max_unless_identical():
    q, cands = _sims_candidates([0.3])
    assert route_recall(q, cands).rope_jump == 6
    assert route_recall(q, [(4, q.clone())]).rope_jump == 0  # sim 1 -> Σg <= 1e-6 -> ĝ = 0
    assert similarity_rope_jump([], None) == 6
    assert similarity_rope_jump([0.5], 0.5, jump_min=2, jump_max=10) == 10


def test_jump_rounds_half_to_even():
    # gaps 1 and 1, selected gap 1 -> ĝ = 0.5 -> 0 + 0.5 * 5 = 2.5 -> 2 (half-up would give 3).
    assert similarity_rope_jump([0.0, 0.0], 0.0, jump_min=0, jump_max=5) == 2
    assert similarity_rope_jump([0.0, 0.0], 0.0, jump_min=0, jump_max=7) == 4  # 3.5 -> 4


def test_ties_pick_the_first_candidate_and_empty_pool_is_none():
    q = unit(1, 0)
    d = route_recall(q, [(2, unit(1, 1)), (0, unit(1, 1)), (1, unit(0, 1))], method="idf")
    assert d.scene_index == 2 and d.reason == "idf"
    assert route_recall(q, []) is None


def test_manual_override_and_errors():
    q, cands = _sims_candidates([0.737, 0.102, 0.026])
    d = route_recall(q, cands, manual=2)
    assert (d.scene_index, d.reason) == (2, "manual")
    assert d.score == pytest.approx(0.026, abs=1e-6)
    # jump from the manual scene's own similarity: ĝ = 0.974 / 2.135 -> round(2.74) = 3
    assert d.rope_jump == 3
    with pytest.raises(ValueError, match=r"scene 6 .*\[1, 2, 3\]"):
        route_recall(q, cands, manual=5)
    with pytest.raises(ValueError, match="scene 1"):
        route_recall(q, [], manual=0)


def test_threshold_is_off_by_default_and_optional():
    q, cands = _sims_candidates([0.2, 0.1])
    assert route_recall(q, cands).scene_index == 0  # official: always recalls something
    d = route_recall(q, cands, threshold=0.5)
    assert not d.matched and d.scene_index is None and d.reason == "below_threshold"
    assert d.score == pytest.approx(0.2, abs=1e-6) and d.rope_jump == 6
    assert route_recall(q, cands, threshold=0.15).scene_index == 0
    assert route_recall(q, cands, threshold=0.5, manual=1).scene_index == 1  # manual ignores the threshold


class BagOfWordsEncoder:
    """Stand-in text encoder: one one-hot row per word, zero-padded to 8 rows; records its calls."""

    def __init__(self, vocab):
        self.vocab = {w: i for i, w in enumerate(vocab)}
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            rows = torch.zeros(8, len(self.vocab))
            for r, w in enumerate(p.split()):
                rows[r, self.vocab[w]] = 1
            out.append(rows)
        return out


PROMPTS = ["a cat in a garden, red ball", "a cat in a garden, blue car", "a cat in a garden, red ball bouncing"]


def test_router_similarity_encodes_filtered_prompts_lazily():
    enc = BagOfWordsEncoder(["red", "ball", "blue", "car", "bouncing"])
    router = RecallRouter(PROMPTS, "Similar", enc)
    assert enc.calls == []  # nothing encoded until a recall is routed
    d = router.route(2, [0, 1])
    assert enc.calls == [["red ball", "blue car", "red ball bouncing"]]  # "cat", "garden" are common (3 of 3)
    assert d.scene_index == 0 and d.reason == "similarity"
    assert d.score == pytest.approx(2 / math.sqrt(6), abs=1e-6)
    assert dict(d.scores)[1] == pytest.approx(0.0, abs=1e-6)
    assert d.rope_jump == 1  # gaps 0.1835 and 1 -> ĝ = 0.155 -> round(0.93)
    router.route(1, [0])
    assert len(enc.calls) == 1  # features are cached


def test_router_idf_from_timeline_with_manual_source():
    t = parse_timeline(" | ".join(f"{p} [5s@]" for p in PROMPTS[:2]) + " | " + PROMPTS[2] + " [5s]")
    router = RecallRouter.from_timeline(t, "IDF")
    d = router.route(2, [0, 1], manual=t.transitions[1].recall_source)
    assert d.scene_index == 0 and d.reason == "idf"
    t = parse_timeline(f"{PROMPTS[0]} [5s#] | {PROMPTS[1]} [5s@2] | {PROMPTS[2]} [5s]")
    d = router.route(2, [0, 1], manual=t.transitions[1].recall_source)
    assert (d.scene_index, d.reason) == (1, "manual")


def test_router_rejects_bad_configuration():
    with pytest.raises(ValueError, match="unknown"):
        RecallRouter(PROMPTS, "cosine")
    with pytest.raises(ValueError, match="encode"):
        RecallRouter(PROMPTS, "similarity")
    with pytest.raises(IndexError):
        RecallRouter(PROMPTS, "idf").route(3, [0])
    bad = RecallRouter(PROMPTS, "similarity", lambda ps: [torch.ones(2, 3)])
    with pytest.raises(ValueError, match="1 embeddings for 3 prompts"):
        bad.route(1, [0])
