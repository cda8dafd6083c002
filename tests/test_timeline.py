"""Timeline language (spec §6.1): worked examples, marker semantics, arithmetic, errors, JSON, fuzzing."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_core.timeline import (
    MarkerSemantics,
    Timeline,
    TimelineError,
    TransitionMode,
    parse_timeline,
)

H, R, S = TransitionMode.HARDCUT, TransitionMode.RECALL, TransitionMode.SMOOTH
RECALL_64 = "A[10s#] | B[10s#] | C[10s@] | A2[10s@] | B2[10s@] | C2[10s]"


# ------------------------------------------------------------------------------------------- worked examples

def test_six_ten_second_scenes_match_the_official_worked_example():
    t = parse_timeline(" | ".join(f"scene {i} [10s]" for i in range(6)))
    assert t.latent_frames == 240 and t.total_chunks == 80
    assert [s.num_chunks for s in t.scenes] == [13, 13, 13, 13, 13, 15]
    assert [s.start_chunk for s in t.scenes] == [0, 13, 26, 39, 52, 65]
    assert [tr.at_chunk for tr in t.transitions] == [13, 26, 39, 52, 65]
    assert t.video_frames == 957
    assert all(tr.mode is S for tr in t.transitions)  # no marker -> default smooth


def test_recall64_markers_are_outgoing_by_default():
    t = parse_timeline(RECALL_64)
    assert [tr.mode for tr in t.transitions] == [H, H, R, R, R]
    assert [(tr.from_scene, tr.to_scene) for tr in t.transitions] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert all(tr.recall_source is None for tr in t.transitions)
    assert [s.prompt for s in t.scenes] == ["A", "B", "C", "A2", "B2", "C2"]
    assert [s.marker for s in t.scenes] == ["#", "#", "@", "@", "@", None]


def test_incoming_semantics_reads_the_marker_of_the_entered_scene():
    text = "A | B[5s#] | C[5s@]"
    out = parse_timeline(text)
    inc = parse_timeline(text, marker_semantics="incoming")
    assert [tr.mode for tr in out.transitions] == [S, H]  # C's marker ignored
    assert [tr.mode for tr in inc.transitions] == [H, R]
    assert out.scenes[2].marker == "@"  # an ignored marker is still recorded
    # README two-scene example: a hard cut officially, a recall under the incoming reading.
    readme = "rooftop at dusk [10s#] | back on the same rooftop [10s@]"
    assert parse_timeline(readme).transitions[0].mode is H
    assert parse_timeline(readme, marker_semantics=MarkerSemantics.INCOMING).transitions[0].mode is R


def test_default_mode_applies_to_unmarked_transitions():
    t = parse_timeline("a | b | c[3s@]", default_mode="hardcut", marker_semantics="incoming")
    assert [tr.mode for tr in t.transitions] == [H, R]


def test_tag_syntax_variants():
    t = parse_timeline("a red [ 2.5 s # ] ball |\n  a cube [.5s@]   | last [3 s]")
    assert [s.prompt for s in t.scenes] == ["a red ball", "a cube", "last"]
    assert [s.seconds for s in t.scenes] == [2.5, 0.5, 3.0]
    assert [s.marker for s in t.scenes] == ["#", "@", None]
    assert [tr.mode for tr in t.transitions] == [H, R]


def test_empty_parts_are_dropped():
    t = parse_timeline("| a [1s] || | b [1s] |")
    assert [s.prompt for s in t.scenes] == ["a", "b"]
    assert [s.index for s in t.scenes] == [0, 1]


def test_subtitles_are_padded_and_truncated():
    assert parse_timeline("a | b | c ; one | two").subtitles == ("one", "two", "")
    assert parse_timeline("a | b ; one | two | three").subtitles == ("one", "two")
    assert parse_timeline("a | b").subtitles == ("", "")
    # Official `split(';')[1]`: subtitles lie between the first and the second ';' (brackets allowed there).
    assert parse_timeline("a ; x [y] ; z").subtitles == ("x [y]",)
    assert parse_timeline("a;x;y").subtitles == ("x",)


# ------------------------------------------------------------------------------------------------ arithmetic

def test_framewise_chunks_fpc_1():
    t = parse_timeline("A[1s] | B[2s]", frames_per_chunk=1)
    # A: int(16/4) = 4 chunks; total 3 s -> 48 frames -> 12 latent frames; B takes the remaining 8.
    assert [s.num_chunks for s in t.scenes] == [4, 8]
    assert t.latent_frames == 12 and t.video_frames == 45
    assert t.transitions[0].at_chunk == 4


def test_missing_durations_use_defaults_or_total_latent_frames():
    # Official: without every duration the video is --num_output_frames long (default 672 latent frames).
    t = parse_timeline("A | B[1s]")
    assert [s.num_chunks for s in t.scenes] == [21, 203] and t.latent_frames == 672
    t = parse_timeline("A | B[1s]", total_latent_frames=100)  # rounded up to 102 = 34 chunks
    assert t.latent_frames == 102 and [s.num_chunks for s in t.scenes] == [21, 13]
    t = parse_timeline("A | B[1s]", total_latent_frames=None)  # None: the sum of the scenes' own chunks
    assert [s.num_chunks for s in t.scenes] == [21, 1] and t.latent_frames == 66
    t = parse_timeline("A | B", default_chunks_per_scene=5, total_latent_frames=None)
    assert [s.num_chunks for s in t.scenes] == [5, 5]
    # When every scene has a duration, total_latent_frames is ignored (official --num_output_frames).
    # 10 s -> 160 frames -> 40 latent -> rounded up to 42 = 14 chunks.
    assert parse_timeline("A[10s]", total_latent_frames=999).latent_frames == 42


def test_tiny_total_is_at_least_one_chunk():
    t = parse_timeline("A[0.1s]")
    assert t.total_chunks == 1 and t.latent_frames == 3 and t.video_frames == 9


def test_other_fps_and_compression():
    t = parse_timeline("A[3s] | B[3s]", fps=24, temporal_compression=8, frames_per_chunk=2)
    # per scene int(72/16) = 4; total int(144)//8 = 18 -> 18 latent = 9 chunks -> B gets 5.
    assert [s.num_chunks for s in t.scenes] == [4, 5]
    assert t.video_frames == 8 * 17 + 1


def test_too_few_chunks_for_the_last_scene_is_an_error():
    with pytest.raises(TimelineError) as e:
        parse_timeline("A | B | C", total_latent_frames=60)
    assert e.value.scene_index == 2 and "scene 3" in str(e.value) and "42 chunks" in str(e.value)


def test_chunk_lookups():
    t = parse_timeline(" | ".join(["x [10s]"] * 6))
    assert t.scene_at_chunk(0).index == 0 and t.scene_at_chunk(12).index == 0
    assert t.scene_at_chunk(13).index == 1 and t.scene_at_chunk(79).index == 5
    with pytest.raises(IndexError):
        t.scene_at_chunk(80)
    assert t.transition_at_chunk(13) == t.transitions[0]
    assert t.transition_at_chunk(65).to_scene == 5
    assert t.transition_at_chunk(0) is None and t.transition_at_chunk(14) is None


def test_json_round_trip():
    t = parse_timeline("A[10s#] | B[10s@1] | C[3.5s] ; sa | sb", marker_semantics="outgoing")
    d = json.loads(json.dumps(t.to_dict()))
    assert d["transitions"][1]["mode"] == "recall" and d["transitions"][1]["recall_source"] == 0
    assert Timeline.from_dict(d) == t
    d["scenes"][1]["num_chunks"] += 1
    with pytest.raises(TimelineError):
        Timeline.from_dict(d)


# ----------------------------------------------------------------------------------------------- manual @N

def test_manual_recall_source():
    t = parse_timeline("A[10s] | B[10s#] | C[10s@1] | D[10s]")
    tr = t.transitions[2]
    assert (tr.mode, tr.recall_source) == (R, 0) and t.scenes[2].recall_source == 1
    t = parse_timeline("A | B[5s#] | C[5s@ 2]", marker_semantics="incoming")
    assert (t.transitions[1].mode, t.transitions[1].recall_source) == (R, 1)


@pytest.mark.parametrize("text, semantics, scene, column", [
    ("A[1s@2] | B", "outgoing", 0, 4),       # enters scene 2: only scene 1 is earlier
    ("A | B[1s@2]", "incoming", 1, 8),       # enters scene 2: only scene 1 is earlier
    ("A | B[1s@9] | C", "outgoing", 1, 8),
    ("A | B[1s@1]", "outgoing", 1, 8),       # last scene's marker has no transition
    ("A[1s@1] | B", "incoming", 0, 4),       # first scene's marker has no transition
    ("A | B[1s@0] | C", "outgoing", 1, 8),   # scenes are numbered from 1
])
def test_bad_manual_recall(text, semantics, scene, column):
    with pytest.raises(TimelineError) as e:
        parse_timeline(text, marker_semantics=semantics)
    assert e.value.scene_index == scene and e.value.column == column
    assert e.value.field == "recall_source"
    assert f"scene {scene + 1} (" in str(e.value) and f"column {column}" in str(e.value)


# -------------------------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("text, scene, column, field, words", [
    ("a red ball [10s", 0, 11, "tag", "unclosed '['"),
    ("a | b [10s | c [2s]", 1, 6, "tag", "unclosed '['"),
    ("a | b [1s [2s]]", 1, 6, "tag", "unclosed '['"),
    ("a | red ball ] here", 1, 13, "tag", "stray ']'"),
    ("a | b [10m]", 1, 9, "unit", "unknown unit 'm'"),
    ("a | b [10]", 1, 9, "unit", "no unit"),
    ("a | b [10 sec]", 1, 10, "unit", "unknown unit 'sec'"),
    ("a | b [10s!]", 1, 10, "marker", "unknown marker '!'"),
    ("a | b [10s#@]", 1, 10, "marker", "unknown marker '#@'"),
    ("a | b [10s#2]", 1, 10, "marker", "only follow '@'"),
    ("a | b [0s]", 1, 7, "duration", "positive"),
    ("a | b [-3s]", 1, 7, "duration", "positive"),
    ("a | b [abc s]", 1, 6, "duration", "not a duration tag"),
    ("a | b [cute] dog", 1, 6, "duration", "cannot be escaped"),
    ("a | b []", 1, 6, "duration", "empty brackets"),
    ("a | b [1s] c [2s]", 1, 13, "duration", "more than one duration tag"),
    ("a | [10s#] | c", 1, 4, "prompt", "no prompt text"),
])
def test_error_kinds_name_scene_column_and_fix(text, scene, column, field, words):
    with pytest.raises(TimelineError) as e:
        parse_timeline(text)
    err = e.value
    msg = str(err)
    assert (err.scene_index, err.column, err.field) == (scene, column, field), msg
    assert words in msg
    assert f"scene {scene + 1} (" in msg and f"column {column}" in msg
    if field in ("tag", "unit", "marker", "duration") and "more than one" not in msg:
        assert "[10s]" in msg  # the fix shows the tag syntax


def test_error_message_quotes_the_scene_text():
    with pytest.raises(TimelineError, match=r"scene 2 \('a red ball \[10m\]'\)"):
        parse_timeline("first [1s] | a red ball [10m]")


@pytest.mark.parametrize("text", ["", "   ", " | | ", "; only subtitles"])
def test_empty_timeline(text):
    with pytest.raises(TimelineError, match="no scenes"):
        parse_timeline(text)


@pytest.mark.parametrize("kwargs", [
    {"fps": 0}, {"fps": -1.0}, {"frames_per_chunk": 0}, {"frames_per_chunk": 1.5}, {"temporal_compression": 0},
    {"default_chunks_per_scene": 0}, {"total_latent_frames": 0}, {"default_mode": "fade"},
    {"marker_semantics": "both"},
])
def test_bad_options(kwargs):
    with pytest.raises(TimelineError):
        parse_timeline("a | b", **kwargs)


# ------------------------------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(alphabet="[]|;#@s0123456789. -abm\n", max_size=40))
def test_fuzz_random_text_only_raises_timeline_error(text):
    try:
        t = parse_timeline(text)
    except TimelineError as e:
        assert str(e)
        return
    assert sum(s.num_chunks for s in t.scenes) == t.total_chunks


def _oracle_latent(seconds, fps, fpc, tc, default, total_latent):
    """Spec §6.1 formulas, written independently of the implementation."""
    chunks = [default if d is None else max(1, int(d * fps / (tc * fpc))) for d in seconds]
    if all(d is not None for d in seconds):
        latent = max(fpc, math.ceil((int(sum(seconds) * fps) // tc) / fpc) * fpc)
    elif total_latent is not None:
        latent = math.ceil(total_latent / fpc) * fpc
    else:
        latent = sum(chunks) * fpc
    return chunks, latent


scene_st = st.tuples(
    st.text(alphabet="abcxyz ", min_size=1, max_size=8).filter(str.strip),
    st.one_of(st.none(), st.integers(1, 400).map(lambda x: x / 8)),
    st.sampled_from(["", "#", "@"]),
)


@FUZZ
@given(st.lists(scene_st, min_size=1, max_size=7), st.sampled_from([1, 2, 3, 4]), st.sampled_from([8, 16, 24.0]),
       st.sampled_from([1, 4]), st.one_of(st.none(), st.integers(1, 300)), st.sampled_from(list(MarkerSemantics)))
def test_fuzz_well_formed_timelines(scenes, fpc, fps, tc, total_latent, semantics):
    parts = []
    for words, seconds, marker in scenes:
        tag = "" if seconds is None else f" [{seconds:g}s{marker}]"
        parts.append(words + tag)
    text = " | ".join(parts)
    seconds = [d for _, d, _ in scenes]
    chunks, latent = _oracle_latent(seconds, fps, fpc, tc, 21, total_latent)
    kwargs = {"fps": fps, "frames_per_chunk": fpc, "temporal_compression": tc, "marker_semantics": semantics,
              "total_latent_frames": total_latent}
    if sum(chunks[:-1]) >= latent // fpc:
        with pytest.raises(TimelineError) as e:
            parse_timeline(text, **kwargs)
        assert e.value.scene_index == len(scenes) - 1
        return
    t = parse_timeline(text, **kwargs)
    assert t.latent_frames == latent
    assert sum(s.num_chunks for s in t.scenes) == t.total_chunks
    assert [s.num_chunks for s in t.scenes[:-1]] == chunks[:-1]
    assert [s.prompt for s in t.scenes] == [w.strip() for w, _, _ in scenes]
    expected_modes = []
    for i in range(len(scenes) - 1):
        seconds_i, marker = scenes[i if semantics is MarkerSemantics.OUTGOING else i + 1][1:]
        marker = marker if seconds_i is not None else ""
        expected_modes.append({"": S, "#": H, "@": R}[marker])
    assert [tr.mode for tr in t.transitions] == expected_modes
    assert [tr.at_chunk for tr in t.transitions] == [s.start_chunk for s in t.scenes[1:]]
    assert Timeline.from_dict(json.loads(json.dumps(t.to_dict()))) == t
