"""`--steer FILE` on `python -m echo_core generate` and `demo`: timed edits replayed on the run, the final text
written beside the output, and that text with the same seed through --timeline gives identical tensors."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from echo_core.cli import main

SCRIPT = ('{"chunk": 4, "action": "cut", "prompt": "a blue bird sings in a tree", "seconds": 3.75}\n'
          '{"chunk": 9, "action": "recall", "scene": 1}\n')


def _generate(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / name
    rc = main(["generate", "--preset", "tiny-random", "--seed", "7", "--steps", "1000,500", "--width", "32",
               "--height", "32", "--out", str(out), "--report", str(tmp_path / f"{name}.json"), *args])
    assert rc == 0
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_generate_steer_then_timeline_gives_equal_tensors(tmp_path):
    steer = tmp_path / "steer.jsonl"
    steer.write_text(SCRIPT)
    a = _generate(tmp_path, "A.safetensors", "--timeline", "a red fox runs [8s] | a green frog jumps [4s#]",
                  "--steer", str(steer))
    text = (tmp_path / "A.safetensors.timeline.txt").read_text().strip()
    assert text == a["timeline_text"]
    assert [(e["action"], e["applied_at_chunk"]) for e in a["steering"]] == [("cut", 4), ("recall", 9)]
    assert [(s["prompt"], s["start_chunk"]) for s in a["scenes"]][:3] == [
        ("a red fox runs", 0), ("a blue bird sings in a tree", 4), ("a red fox runs", 9)]
    assert a["scenes"][1]["transition"] == "hardcut" and a["scenes"][2]["recall_source"] == 1
    _generate(tmp_path, "B.safetensors", "--timeline", text)
    ta, tb = load_file(tmp_path / "A.safetensors"), load_file(tmp_path / "B.safetensors")
    assert ta["latents"].shape == tb["latents"].shape and ta["latents"].equal(tb["latents"])
    assert (tmp_path / "A.safetensors").read_bytes() == (tmp_path / "B.safetensors").read_bytes()


@pytest.mark.parametrize("script, needle", [
    ('{"chunk": 2, "action": "recall", "scene": 0}', r"--steer line 1: scene: must be a whole number >= 1"),
    ('{"chunk": 2, "action": "cut", "prompt": "x"}', r"--steer line 1: seconds: cut needs 'seconds'"),
    ('{"chunk": 3, "action": "stop"}\nnot json', r"--steer line 2: not JSON"),
    ('{"chunk": 2, "action": "recall", "scene": 3}', r"--steer edit at chunk 2 \(recall\): scene: scene 3 has not "
                                                     "finished"),
    ('{"chunk": 99, "action": "stop"}', r"--steer edit at chunk 99 \(stop\): chunk: the video ended after 6 chunks"),
])
def test_bad_steer_files_name_the_line_and_field(tmp_path, capsys, script, needle):
    import re

    steer = tmp_path / "s.jsonl"
    steer.write_text(script)
    rc = main(["generate", "--preset", "tiny-random", "--timeline", "a fox [2s] | a bird [2s#]", "--steps", "1000",
               "--width", "16", "--height", "16", "--out", str(tmp_path / "x.safetensors"), "--steer", str(steer)])
    err = capsys.readouterr().err
    assert rc == 2 and re.search(needle, err), err


def test_demo_steer_writes_timeline_and_latents_that_replay(tmp_path, capsys):
    pytest.importorskip("imageio")
    steer = tmp_path / "d.jsonl"
    steer.write_text('{"chunk": 2, "action": "cut", "prompt": "a white square moving left on an orange dotted '
                     'background", "seconds": 1.5}\n{"chunk": 4, "action": "recall", "scene": 1, "seconds": 1.5}\n')
    tl = "a red circle moving right on a blue striped background [6s]"
    common = ["demo", "--steps", "1", "--scale", "1", "--seed", "3"]
    assert main([*common, "--timeline", tl, "--steer", str(steer), "--out", str(tmp_path / "d.mp4"),
                 "--latents", str(tmp_path / "d.safetensors")]) == 0
    text = (tmp_path / "d.mp4.timeline.txt").read_text().strip()
    assert text.count("|") == 2 and "[1.5s#]" in text and "@1]" in text
    assert main([*common, "--timeline", text, "--out", str(tmp_path / "e.mp4"),
                 "--latents", str(tmp_path / "e.safetensors")]) == 0
    a, b = load_file(tmp_path / "d.safetensors")["latents"], load_file(tmp_path / "e.safetensors")["latents"]
    assert a.shape[2] == 6 * 3 and a.equal(b)
