"""`python -m echo_core batch`: same outputs in-process and on Ray, resume after a kill, failures recorded.

The Ray tests (marked `ray`, run alone with `-m ray`) start a private local cluster (no dashboard, no usage
report) and check that it leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from echo_core.batch.manifest import Manifest, incomplete_reason
from echo_core.batch.settings import BatchSettings
from echo_core.batch.tasks import BatchTask, parse_prompt_lines, task_seed
from echo_core.cli import main
from echo_core.timeline import TimelineError, parse_script

ROOT = Path(__file__).resolve().parents[1]

# 12 lines for the bundled toy model (its grammar), 1-second scenes: one, two (hard cut) or three (recall) scenes.
_TOY_SCENES = [
    "a red circle moving right on a blue striped background",
    "a yellow square bouncing on a green plain background",
    "a white ring moving left on a purple checkered background",
    "a cyan cross moving up on an orange dotted background",
]
TOY_LINES = [f"{_TOY_SCENES[i % 4]} [1s]" for i in range(6)] + [
    f"{_TOY_SCENES[i % 4]} [1s#] | {_TOY_SCENES[(i + 1) % 4]} [1s]" for i in range(3)] + [
    f"{_TOY_SCENES[i]} [1s#] | {_TOY_SCENES[i + 1]} [1s@] | {_TOY_SCENES[i]} [1s]" for i in range(3)]
TINY_LINES = [f"a fox number {i} in the snow [1s#] | a bird over the sea [1s]" for i in range(1, 13)]
TINY = ["--preset", "tiny-random", "--steps", "1000,500"]


def batch(*argv: str) -> int:
    try:
        return main(["batch", "--no-progress", *argv])
    except SystemExit as e:  # 1: some task failed, 130: interrupted
        return int(e.code or 0)


def write_prompts(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def manifest(out: Path) -> list[dict]:
    return [json.loads(s) for s in (out / "manifest.jsonl").read_text().splitlines()]


def latents(out: Path, line: int) -> torch.Tensor:
    return load_file(str(out / f"line-{line:04d}" / "latents.safetensors"))["latents"].clone()  # not a file view


def partial_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if ".partial" in p.name]


def descendants(pid: int) -> set[str]:
    """Live processes below `pid` (from /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
        if rest[0] != "Z":
            children.setdefault(int(rest[1]), []).append((int(stat.parent.name), name))
    found, stack = set(), [pid]
    while stack:
        for child, name in children.get(stack.pop(), []):
            found.add(f"{child} {name}")
            stack.append(child)
    return found


def assert_no_process_left(before: set[str]) -> None:
    """Ray must stop every process it started for the batch (a few seconds' grace for exiting workers)."""
    deadline = time.monotonic() + 15
    while (left := descendants(os.getpid()) - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, left


def assert_same_outputs(a: Path, b: Path, lines: int, video: bool) -> None:
    for line in range(1, lines + 1):
        assert torch.equal(latents(a, line), latents(b, line)), f"line {line} differs"
        if video:
            name = f"line-{line:04d}/video.mp4"
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"line {line} video differs"


def assert_complete(out: Path, n: int) -> list[dict]:
    records = manifest(out)
    assert [r["line"] for r in records] == list(range(1, n + 1))  # one record per task, in line order
    assert all(r["status"] == "ok" and r["error"] is None for r in records), [r["error"] for r in records]
    assert not partial_files(out)
    settings = json.loads((out / "batch.json").read_text())["fingerprint"]
    for r in records:
        task = BatchTask(r["line"], r["prompt"], r["seed"])
        assert incomplete_reason(r, task, settings, out) is None
        assert all(not Path(p).is_absolute() and (out / p).is_file() for p in r["outputs"].values())
        assert r["seconds"] > 0 and r["peak_bytes"] > 0
    return records


# ------------------------------------------------------------------------------------------------ units
def test_seed_depends_only_on_base_seed_and_line():
    assert task_seed(0, 1) == 1127396318  # pinned: a change here changes every batch's videos
    seeds = {task_seed(base, line) for base in (0, 1) for line in range(1, 51)}
    assert len(seeds) == 100 and all(0 <= s < 2**31 for s in seeds)
    code = "from echo_core.batch.tasks import task_seed; print(task_seed(7, 3))"
    other = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert int(other.stdout) == task_seed(7, 3)  # no per-process salt


def test_prompt_lines_numbered_as_in_the_file_blank_lines_skipped():
    tasks = parse_prompt_lines("a cat [1s]\n\n  a dog [1s#] | a cat [1s] ; sub 1 | sub 2 \nbad [3x]\n", base_seed=5)
    assert [(t.line, t.text) for t in tasks] == [(1, "a cat [1s]"), (3, "a dog [1s#] | a cat [1s] ; sub 1 | sub 2"),
                                                 (4, "bad [3x]")]
    assert [t.error is None for t in tasks] == [True, True, False]
    assert [t.seed for t in tasks] == [task_seed(5, n) for n in (1, 3, 4)]


def test_manifest_last_record_wins_and_a_torn_record_is_skipped(tmp_path):
    m = Manifest(tmp_path)
    m.append({"line": 1, "status": "failed"})
    m.append({"line": 2, "status": "ok"})
    with open(m.path, "a") as f:
        f.write('{"line": 1, "status": "o')  # a kill in the middle of a record
    m.append({"line": 1, "status": "ok"})
    assert m.load() == {1: {"line": 1, "status": "ok"}, 2: {"line": 2, "status": "ok"}}
    m.compact(m.load().values())
    assert [json.loads(s)["line"] for s in m.path.read_text().splitlines()] == [1, 2]


def test_settings_fingerprint_changes_with_any_setting():
    a = BatchSettings(model="toy", model_id="toy:x")
    assert a.fingerprint() == BatchSettings(model="toy", model_id="toy:x").fingerprint()
    assert a.fingerprint() != BatchSettings(model="toy", model_id="toy:x", steps=(1000.0,)).fingerprint()
    assert a.differences(BatchSettings(model="toy", model_id="toy:x", base_seed=3).to_dict()) == [
        "base_seed: 0 here, 3 there"]


# ------------------------------------------------------------------------------------------- in-process
def test_malformed_line_is_recorded_with_the_parser_message(tmp_path, one_thread):
    lines = ["a fox [1s]", "a fox [1x]", "a bird [1s#] | a fox [1s]", "a cat [2s] | a dog [1s@9]"]
    out = tmp_path / "out"
    assert batch("--prompts", str(write_prompts(tmp_path / "p.txt", lines)), "--out", str(out), *TINY) == 1
    records = {r["line"]: r for r in manifest(out)}
    assert [records[n]["status"] for n in (1, 2, 3, 4)] == ["ok", "failed", "ok", "failed"]
    with pytest.raises(TimelineError) as e:
        parse_script(lines[1])
    assert records[2]["error"] == str(e.value) and records[2]["outputs"] == {} and records[2]["attempts"] == 0
    assert not (out / "line-0002").exists()
    # Parsed, but the scheduler (on the worker) rejects it: a user error, recorded once, never retried.
    assert "'@9'" in records[4]["error"] and records[4]["attempts"] == 1
    # A rerun regenerates nothing that is complete and does not duplicate the failures' records.
    assert batch("--prompts", str(tmp_path / "p.txt"), "--out", str(out), *TINY) == 1
    assert len(manifest(out)) == 4 and len((out / "manifest.jsonl").read_text().splitlines()) == 4


def test_failing_task_is_retried_then_recorded_and_a_transient_one_succeeds(tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("ECHO_BATCH_FAULTS", "2:raise,3:raise:1")
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.txt", TINY_LINES[:4])
    assert batch("--prompts", str(prompts), "--out", str(out), "--retries", "2", *TINY) == 1
    r = {x["line"]: x for x in manifest(out)}
    assert r[2]["status"] == "failed" and r[2]["attempts"] == 3
    assert "injected fault on line 2, attempt 3" in r[2]["error"]
    assert len(r[2]["attempt_errors"]) == 2
    assert r[3]["status"] == "ok" and r[3]["attempts"] == 2 and "attempt 1" in r[3]["attempt_errors"][0]
    assert r[1]["attempts"] == r[4]["attempts"] == 1
    monkeypatch.delenv("ECHO_BATCH_FAULTS")  # the fault is gone: the rerun completes line 2 only
    assert batch("--prompts", str(prompts), "--out", str(out), *TINY) == 0
    records = assert_complete(out, 4)
    assert [x["attempts"] for x in records] == [1, 1, 2, 1]


def test_rerun_regenerates_only_incomplete_outputs(tmp_path, one_thread):
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.txt", TINY_LINES[:4])
    assert batch("--prompts", str(prompts), "--out", str(out), *TINY) == 0
    before = {n: latents(out, n) for n in range(1, 5)}
    lat2, rep3 = out / "line-0002/latents.safetensors", out / "line-0003/report.json"
    data = bytearray(lat2.read_bytes())
    data[-1] ^= 1  # same size, one bit off: only the digest notices
    lat2.write_bytes(bytes(data))
    rep3.unlink()
    (out / "line-0004" / ".latents.safetensors.123.partial").write_bytes(b"half")  # left by a killed writer
    stamp1 = (out / "line-0001/latents.safetensors").stat().st_mtime_ns
    assert batch("--prompts", str(prompts), "--out", str(out), *TINY) == 0
    assert_complete(out, 4)
    assert (out / "line-0001/latents.safetensors").stat().st_mtime_ns == stamp1  # complete: not regenerated
    assert all(torch.equal(before[n], latents(out, n)) for n in range(1, 5))


def test_checkpoint_task_equals_generate_with_the_task_seed(tmp_path, one_thread):
    """--checkpoint + --text-embeds (a folder, one file per line): each task is what `generate` gives for that
    line with the task's seed."""
    from safetensors.torch import save_file

    from echo_core.model.config import get_preset
    from echo_core.model.wan import CausalWanModel

    torch.manual_seed(0)
    model = CausalWanModel(get_preset("tiny"))
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    (emb := tmp_path / "emb").mkdir()
    g = torch.Generator().manual_seed(1)
    lines = ["a fox [1s#] | a bird [1s]", "", "a cat [1s] | a dog [1s]"]
    files = {n: emb / f"line-000{n}.safetensors" for n in (1, 3)}  # line 2 is blank: no task, no file
    for path in files.values():
        save_file({f"context.{i}": torch.randn(5, 32, generator=g) for i in range(2)}, str(path))
    common = ["--checkpoint", str(ckpt), "--steps", "1000,500", "--height", "64", "--width", "64", "--memory", "echo"]
    out = tmp_path / "out"
    assert batch("--prompts", str(write_prompts(tmp_path / "p.txt", lines)), "--out", str(out), "--text-embeds",
                 str(emb), *common) == 0
    for n in (1, 3):
        single = tmp_path / f"g{n}.safetensors"
        assert main(["generate", *common, "--timeline", lines[n - 1], "--text-embeds", str(files[n]),
                     "--seed", str(task_seed(0, n)), "--out", str(single)]) == 0
        assert torch.equal(latents(out, n), load_file(str(single))["latents"])
    assert not (out / "line-0001" / "video.mp4").exists()  # no decoder: latents and report only


def test_user_errors_exit_2(tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.txt", ["a fox [1s]"])
    out = str(tmp_path / "out")
    assert batch("--prompts", str(prompts), "--out", out, "--workers", "2") == 2
    assert "--workers" in capsys.readouterr().err
    assert batch("--prompts", str(prompts), "--out", out, "--width", "64") == 2  # the toy model has its own size
    assert batch("--prompts", str(tmp_path / "none.txt"), "--out", out, *TINY) == 2
    assert batch("--prompts", str(prompts), "--out", out, *TINY, "--height", "100") == 2
    assert batch("--prompts", str(prompts), "--out", out, "--checkpoint", str(prompts)) == 2
    assert "--text-embeds" in capsys.readouterr().err
    assert batch("--prompts", str(prompts), "--out", out, *TINY) == 0
    assert batch("--prompts", str(prompts), "--out", out, *TINY, "--seed", "1") == 2  # other settings, same folder
    assert "seed" in capsys.readouterr().err


def test_batch_runs_without_ray_installed(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", TINY_LINES[:1])
    code = ("import sys; sys.modules['ray'] = None\n"  # import ray -> ImportError
            "from echo_core.cli import main\n"
            f"args = ['batch', '--no-progress', '--prompts', {str(prompts)!r}, '--preset', 'tiny-random', "
            "'--steps', '1000']\n"
            f"print(main(args + ['--out', {str(tmp_path / 'a')!r}]), main(args + ['--out', {str(tmp_path / 'b')!r}, "
            "'--ray', 'local']))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout.split()[-2:] == ["0", "2"], proc.stderr[-2000:]
    assert "pip install ray" in proc.stderr


def _interrupt_after(cmd: list[str], out: Path, records: int, sig: signal.Signals) -> tuple[int, str]:
    """Start the batch, send `sig` once the manifest holds `records` whole records; (exit status, stdout)."""
    # A suite started in the background (`cmd &`) inherits SIGINT ignored, and Python then never turns Ctrl-C into
    # KeyboardInterrupt: give the batch the default disposition, as a terminal would.
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300  # a loaded 2-core machine needs minutes for two toy tasks
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(Manifest(out).load()) >= records:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(sig)
        stdout, _ = proc.communicate(timeout=60)
    return proc.returncode, stdout


def test_interrupted_and_killed_batch_resumes_without_regenerating(tmp_path):
    """Toy model, in-process: Ctrl-C once two tasks are recorded, then SIGKILL two tasks later; the third run
    completes the batch, generating each remaining task once and touching none of the finished ones."""
    out = tmp_path / "out"
    prompts = write_prompts(tmp_path / "p.txt", TOY_LINES[:8])
    cmd = [sys.executable, "-m", "echo_core", "batch", "--no-progress", "--prompts", str(prompts), "--out", str(out)]
    rc, stdout = _interrupt_after(cmd, out, 2, signal.SIGINT)
    assert rc == 130 and json.loads(stdout.splitlines()[-1])["interrupted"]
    first = manifest(out)  # rewritten on the way out: finished tasks only
    assert 2 <= len(first) < 8 and all(r["status"] == "ok" for r in first) and not partial_files(out)

    rc, _ = _interrupt_after(cmd, out, len(first) + 2, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    done = {r["line"]: r for r in Manifest(out).load().values() if r["status"] == "ok"}
    assert len(first) + 2 <= len(done) < 8, "the batch finished before it was killed; give it more lines"
    inodes = {n: (out / r["outputs"]["latents"]).stat().st_ino for n, r in done.items()}
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"line": 8, "status": "ok", "outp')  # as if killed while appending a record

    rerun = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads(rerun.stdout.splitlines()[-1])
    assert summary["skipped"] == len(done) and summary["generated"] == 8 - len(done)  # none generated twice
    records = assert_complete(out, 8)
    assert all((out / records[n - 1]["outputs"]["latents"]).stat().st_ino == ino for n, ino in inodes.items())
    assert all((out / r["outputs"]["video"]).stat().st_size > 0 for r in records)


# ------------------------------------------------------------------------------------------------ Ray
@pytest.mark.ray
def test_ray_local_matches_in_process_on_the_toy_model(tmp_path, one_thread):
    prompts = write_prompts(tmp_path / "p.txt", TOY_LINES)
    steps = ("--steps", "1000,500")  # the model's 5 steps would only make the test slower
    assert batch("--prompts", str(prompts), "--out", str(tmp_path / "a"), *steps) == 0
    before = descendants(os.getpid())
    assert batch("--prompts", str(prompts), "--out", str(tmp_path / "b"), *steps, "--ray", "local", "--workers",
                 "2") == 0
    records = assert_complete(tmp_path / "b", 12)
    assert len({r["worker"] for r in records}) == 2  # both workers took tasks
    assert_complete(tmp_path / "a", 12)
    assert_same_outputs(tmp_path / "a", tmp_path / "b", 12, video=True)
    assert TOY_LINES[0] == TOY_LINES[4] and not torch.equal(latents(tmp_path / "a", 1), latents(tmp_path / "a", 5))
    assert_no_process_left(before)


@pytest.mark.ray
def test_ray_local_matches_in_process_on_tiny_random_through_worker_faults(tmp_path, one_thread, monkeypatch):
    """Line 3 raises once (retried), line 5 kills its worker (Ray restarts it, the task is retried): the outputs
    are still those of the plain in-process run."""
    prompts = write_prompts(tmp_path / "p.txt", TINY_LINES)
    assert batch("--prompts", str(prompts), "--out", str(tmp_path / "a"), *TINY) == 0
    monkeypatch.setenv("ECHO_BATCH_FAULTS", "3:raise:1,5:exit:1")
    before = descendants(os.getpid())
    assert batch("--prompts", str(prompts), "--out", str(tmp_path / "b"), *TINY, "--ray", "local", "--workers",
                 "2") == 0
    records = assert_complete(tmp_path / "b", 12)
    assert records[2]["attempts"] == 2 and "injected fault" in records[2]["attempt_errors"][0]
    assert records[4]["attempts"] == 2 and "worker died" in records[4]["attempt_errors"][0]
    assert_same_outputs(tmp_path / "a", tmp_path / "b", 12, video=False)
    assert not (tmp_path / "b" / "line-0001" / "video.mp4").exists()  # no decoder: latents and report only
    assert_no_process_left(before)
