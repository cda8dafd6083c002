"""`python -m echo_core generate` against careless and hostile input (issue 14): every case ends in a clear error
naming the flag to fix (exit 2, one line, no traceback) or in a run; nothing is half-written, no code in a file
runs. The case list below covers the issue's 62 CLI cases by class; a property-based test then throws random
combinations of flag values at the CLI and counts the outcome classes (clear error / success / crash: 0 crashes).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from echo_core.cli import main
from echo_core.model.config import PRESETS
from echo_core.model.loading import save_checkpoint
from echo_core.model.wan import CausalWanModel

ROOT = Path(__file__).resolve().parents[1]
TINY = PRESETS["tiny"]
BASE = ["generate", "--steps", "1000", "--memory", "rolling"]
pytestmark = pytest.mark.usefixtures("one_thread")


class _Payload:
    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every file a careless or hostile user might pass, built once."""
    d = tmp_path_factory.mktemp("cli_inputs")
    f: dict[str, Path] = {"dir": d / "a_folder", "marker": d / "PWNED", "plain": d / "plain.txt"}
    f["dir"].mkdir()
    f["plain"].write_text("not a folder")
    torch.manual_seed(0)
    good = d / "tiny.safetensors"
    save_checkpoint(CausalWanModel(TINY), good)
    f["ckpt"] = good
    data = good.read_bytes()
    for name, content in (("garbage.safetensors", random.Random(1).randbytes(5000)),
                          ("garbage.pt", random.Random(2).randbytes(5000)),
                          ("truncated.safetensors", data[: len(data) // 2]), ("empty.pt", b""),
                          ("header_only.safetensors", data[:64])):
        (d / name).write_bytes(content)
        f[name] = d / name
    sd = CausalWanModel(TINY).state_dict()
    torch.save({"generator": sd}, d / "real.pt")
    (d / "truncated.pt").write_bytes((d / "real.pt").read_bytes()[:3000])
    f["truncated.pt"] = d / "truncated.pt"
    marker = str(f["marker"])
    hostile = {"system": (os.system, (f"touch {marker}",)), "subprocess": (subprocess.call, (["touch", marker],)),
               "exec": (exec, (f"open({marker!r}, 'w')",)), "open": (open, (marker, "w"))}
    for name, (fn, args) in hostile.items():
        torch.save({"generator": {"blocks.0.self_attn.q.weight": _Payload(fn, args)}}, d / f"{name}.pt")
        f[f"hostile_{name}"] = d / f"{name}.pt"
    torch.save({"w": _Payload(os.system, (f"touch {marker}",))}, d / "renamed.safetensors")
    f["renamed"] = d / "renamed.safetensors"
    save_file({"decoder.head.0.gamma": torch.ones(4)}, str(d / "wrong_arch.safetensors"))
    f["wrong_arch"] = d / "wrong_arch.safetensors"
    # text embeddings (tiny preset: text_dim 32)
    save_file({"context": torch.randn(5, 32)}, str(d / "emb.safetensors"))
    save_file({"context": torch.full((5, 32), float("nan"))}, str(d / "emb_nan.safetensors"))
    save_file({"context": torch.full((5, 32), float("inf"))}, str(d / "emb_inf.safetensors"))
    save_file({"context": torch.randn(5, 7)}, str(d / "emb_dim.safetensors"))
    save_file({"context": torch.ones(5, 32, dtype=torch.int32)}, str(d / "emb_int.safetensors"))
    save_file({"context": torch.randn(0, 32)}, str(d / "emb_empty.safetensors"))
    torch.save({"context": torch.randn(5, 32)}, d / "emb.pt")
    emb = (d / "emb.safetensors").read_bytes()
    (d / "emb_truncated.safetensors").write_bytes(emb[: len(emb) - 100])
    (d / "emb_garbage.safetensors").write_bytes(random.Random(3).randbytes(3000))
    for name in ("emb", "emb_nan", "emb_inf", "emb_dim", "emb_int", "emb_empty", "emb_truncated", "emb_garbage"):
        f[name] = d / f"{name}.safetensors"
    f["emb.pt"] = d / "emb.pt"
    # timeline files
    for name, content in (("tl_empty.txt", b""), ("tl_blank.txt", b"  \n\n \n"), ("tl_binary.txt", bytes(range(256))),
                          ("tl_ok.txt", b"a cat[1s#] | a dog[1s]\nsecond line ignored\n"),
                          ("tl_bad.txt", b"a cat[1x]\n"), ("tl_huge.txt", b"a" * 2_000_000)):
        (d / name).write_bytes(content)
        f[name] = d / name
    # memory configs
    for name, content in (("cfg_bad_json.json", "{nope"), ("cfg_unknown.json", '{"colour": 1}'),
                          ("cfg_list.json", "[1, 2]"), ("cfg_nan.json", '{"memory": {"drift_gate_lambda": NaN}}'),
                          ("cfg_type.json", '{"memory": {"anchor_frames": "twelve"}}'),
                          ("cfg_layout.json", '{"memory": {"anchor_frames": 13}}'),
                          ("cfg_deep.json", "[" * 100_000 + "]" * 100_000), ("cfg_empty.json", ""),
                          ("cfg_ok.json", '{"routing": {"method": "idf"}}')):
        (d / name).write_text(content)
        f[name] = d / name
    return f


def _case(*args, expect: str = "ok") -> tuple[tuple[str, ...], str]:
    return tuple(args), expect


P = ("--preset", "tiny-random")
T = ("--timeline", "a cat[1s#] | a dog[1s]")
# (args with {name} placeholders for the files above, the flag the error must name or "ok")
CASES = {
    # checkpoints: corrupt, hostile, directory, missing, wrong model
    "ckpt garbage safetensors": _case("--checkpoint", "{garbage.safetensors}", *T, expect="--checkpoint"),
    "ckpt garbage pt": _case("--checkpoint", "{garbage.pt}", *T, expect="--checkpoint"),
    "ckpt truncated safetensors": _case("--checkpoint", "{truncated.safetensors}", *T, expect="--checkpoint"),
    "ckpt truncated pt": _case("--checkpoint", "{truncated.pt}", *T, expect="--checkpoint"),
    "ckpt header only": _case("--checkpoint", "{header_only.safetensors}", *T, expect="--checkpoint"),
    "ckpt empty": _case("--checkpoint", "{empty.pt}", *T, expect="--checkpoint"),
    "ckpt os.system": _case("--checkpoint", "{hostile_system}", *T, expect="--checkpoint"),
    "ckpt subprocess": _case("--checkpoint", "{hostile_subprocess}", *T, expect="--checkpoint"),
    "ckpt exec": _case("--checkpoint", "{hostile_exec}", *T, expect="--checkpoint"),
    "ckpt open": _case("--checkpoint", "{hostile_open}", *T, expect="--checkpoint"),
    "ckpt pickle named safetensors": _case("--checkpoint", "{renamed}", *T, expect="--checkpoint"),
    "ckpt directory": _case("--checkpoint", "{dir}", *T, expect="--checkpoint"),
    "ckpt missing": _case("--checkpoint", "{dir}/nope.pt", *T, expect="--checkpoint"),
    "ckpt wrong architecture": _case("--checkpoint", "{wrong_arch}", *T, "--text-embeds", "{emb}",
                                     expect="--checkpoint"),
    "ckpt without embeds": _case("--checkpoint", "{ckpt}", *T, expect="--text-embeds"),
    "ckpt ok": _case("--checkpoint", "{ckpt}", *T, "--text-embeds", "{emb}", "--width", "64", "--height", "64"),
    # text embeddings
    "embeds missing": _case(*P, *T, "--text-embeds", "{dir}/nope.safetensors", expect="--text-embeds"),
    "embeds garbage": _case(*P, *T, "--text-embeds", "{emb_garbage}", expect="--text-embeds"),
    "embeds truncated": _case(*P, *T, "--text-embeds", "{emb_truncated}", expect="--text-embeds"),
    "embeds directory": _case(*P, *T, "--text-embeds", "{dir}", expect="--text-embeds"),
    "embeds NaN": _case(*P, *T, "--text-embeds", "{emb_nan}", expect="--text-embeds"),
    "embeds inf": _case(*P, *T, "--text-embeds", "{emb_inf}", expect="--text-embeds"),
    "embeds wrong width": _case(*P, *T, "--text-embeds", "{emb_dim}", expect="--text-embeds"),
    "embeds integers": _case(*P, *T, "--text-embeds", "{emb_int}", expect="--text-embeds"),
    "embeds no rows": _case(*P, *T, "--text-embeds", "{emb_empty}", expect="--text-embeds"),
    "embeds hostile pickle": _case(*P, *T, "--text-embeds", "{hostile_system}", expect="--text-embeds"),
    "embeds torch file": _case(*P, *T, "--text-embeds", "{emb.pt}"),
    "embeds other keys": _case(*P, *T, "--text-embeds", "{wrong_arch}", expect="--text-embeds"),
    # sizes, chunking, seed, steps, length
    "width -16": _case(*P, *T, "--width", "-16", expect="--width"),
    "width 0": _case(*P, *T, "--width", "0", expect="--width"),
    "height 0": _case(*P, *T, "--height", "0", expect="--height"),
    "width 100": _case(*P, *T, "--width", "100", expect="--width"),
    "100000x100000": _case(*P, *T, "--width", "100000", "--height", "100000", expect="--width"),
    "full 100000x100000": _case(*P, *T, "--memory", "full", "--width", "100000", "--height", "100000",
                                expect="--width"),
    "frames per chunk 0": _case(*P, *T, "--frames-per-chunk", "0", expect="--frames-per-chunk"),
    "frames per chunk -3": _case(*P, *T, "--frames-per-chunk", "-3", expect="--frames-per-chunk"),
    "frames per chunk 7 echo": _case(*P, *T, "--memory", "echo", "--frames-per-chunk", "7",
                                     expect="--frames-per-chunk"),
    "frames per chunk 7 rolling": _case(*P, *T, "--frames-per-chunk", "7"),
    "seed 2**70": _case(*P, *T, "--seed", str(2**70), expect="--seed"),
    "seed -1": _case(*P, *T, "--seed", "-1", expect="--seed"),
    "seed 2**64-1": _case(*P, *T, "--seed", str(2**64 - 1)),
    "seed text": _case(*P, *T, "--seed", "abc", expect="--seed"),
    "steps garbage": _case(*P, *T, "--steps", "fast", expect="--steps"),
    "steps increasing": _case(*P, *T, "--steps", "500,1000", expect="--steps"),
    "steps nan": _case(*P, *T, "--steps", "1000,nan", expect="--steps"),
    "steps empty": _case(*P, *T, "--steps", "", expect="--steps"),
    "seconds nan": _case(*P, "--prompt", "a cat", "--seconds", "nan", expect="--seconds"),
    "seconds negative": _case(*P, "--prompt", "a cat", "--seconds", "-1", expect="--seconds"),
    "seconds with timeline": _case(*P, *T, "--seconds", "3", expect="--seconds"),
    "one day scene": _case(*P, "--timeline", "a day [86400s]", expect="--timeline"),
    "max chunks 0": _case(*P, *T, "--max-chunks", "0", expect="--max-chunks"),
    "max chunks 2": _case(*P, *T, "--max-chunks", "2", expect="--timeline"),
    "total latent frames 0": _case(*P, "--timeline", "a[1s] | b", "--total-latent-frames", "0",
                                   expect="--total-latent-frames"),
    # devices
    "device cuda": _case(*P, *T, "--device", "cuda:7" if torch.cuda.is_available() else "cuda", expect="--device"),
    "device bogus": _case(*P, *T, "--device", "bogus", expect="--device"),
    "device empty": _case(*P, *T, "--device", "", expect="--device"),
    # outputs
    "out directory": _case(*P, *T, "--out", "{dir}", expect="--out"),
    "out under a file": _case(*P, *T, "--out", "{plain}/v.safetensors", expect="--out"),
    "report directory": _case(*P, *T, "--report", "{dir}", expect="--report"),
    "report under a file": _case(*P, *T, "--report", "{plain}/r.json", expect="--report"),
    "report is out": _case(*P, *T, "--report", "{out}", expect="--report"),
    # timelines and prompts
    "timeline file empty": _case(*P, "--timeline-file", "{tl_empty.txt}", expect="--timeline-file"),
    "timeline file blank": _case(*P, "--timeline-file", "{tl_blank.txt}", expect="--timeline-file"),
    "timeline file binary": _case(*P, "--timeline-file", "{tl_binary.txt}", expect="--timeline-file"),
    "timeline file huge": _case(*P, "--timeline-file", "{tl_huge.txt}", expect="--timeline-file"),
    "timeline file directory": _case(*P, "--timeline-file", "{dir}", expect="--timeline-file"),
    "timeline file missing": _case(*P, "--timeline-file", "{dir}/nope.txt", expect="--timeline-file"),
    "timeline file bad tag": _case(*P, "--timeline-file", "{tl_bad.txt}", expect="--timeline-file"),
    "timeline file ok": _case(*P, "--timeline-file", "{tl_ok.txt}"),
    "timeline bad tag": _case(*P, "--timeline", "a cat[10x]", expect="--timeline"),
    "timeline only bars": _case(*P, "--timeline", "| | |", expect="--timeline"),
    "prompt with tags": _case(*P, "--prompt", "a cat[3s]", expect="--prompt"),
    "prompt empty": _case(*P, "--prompt", "  ", expect="--prompt"),
    "prompt 1 MB": _case(*P, "--prompt", "a cat " * 170_000, "--seconds", "1"),
    "timeline 1 MB bad": _case(*P, "--timeline", "a cat " * 170_000 + "[1x]", expect="--timeline"),
    # memory configs
    "config bad JSON": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_bad_json.json}",
                             expect="--memory-config"),
    "config unknown key": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_unknown.json}",
                                expect="--memory-config"),
    "config a list": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_list.json}", expect="--memory-config"),
    "config NaN": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_nan.json}", expect="--memory-config"),
    "config wrong type": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_type.json}",
                               expect="--memory-config"),
    "config bad layout": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_layout.json}",
                               expect="--memory-config"),
    "config deep nesting": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_deep.json}",
                                 expect="--memory-config"),
    "config empty": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_empty.json}", expect="--memory-config"),
    "config directory": _case(*P, *T, "--memory", "echo", "--memory-config", "{dir}", expect="--memory-config"),
    "config for rolling": _case(*P, *T, "--memory-config", "{cfg_ok.json}", expect="--memory-config"),
    "config ok": _case(*P, *T, "--memory", "echo", "--memory-config", "{cfg_ok.json}"),
    # usage errors (argparse)
    "unknown memory": _case(*P, *T, "--memory", "bogus", expect="--memory"),
    "unknown dtype": _case(*P, *T, "--dtype", "fp7", expect="--dtype"),
}


def _expand(args: tuple[str, ...], files: dict[str, Path], out: Path) -> list[str]:
    names = {**{k: str(v) for k, v in files.items()}, "out": str(out)}
    return [re.sub(r"\{([\w.]+)\}", lambda m: names[m.group(1)], a) for a in args]


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    """main() in-process: (exit code, stderr). An exception escaping main is a crash."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse usage errors
        rc = int(e.code or 0)
    return rc, capsys.readouterr().err


def classify(rc: int, err: str, expect_flag: str | None = None) -> str:
    """'error' (exit 2, one 'error: <flag>' line naming a flag), 'success' or 'crash' (anything else)."""
    if "Traceback" in err or "internal error" in err:
        return "crash"
    if rc == 0:
        return "success"
    last = err.strip().splitlines()[-1] if err.strip() else ""
    if rc == 2 and "error: " in last and (expect_flag is None or expect_flag in last) and len(last) < 1500:
        return "error"
    return "crash"


@pytest.mark.parametrize("name", list(CASES))
def test_cli_case(name, files, tmp_path, capsys):
    args, expect = CASES[name]
    out = tmp_path / "out" / "v.safetensors"
    argv = [*BASE, "--out", str(out), *_expand(args, files, out)]
    if "--report" not in argv:
        argv += ["--report", str(tmp_path / "out" / "r.json")]
    rc, err = run_cli(argv, capsys)
    outcome = classify(rc, err, None if expect == "ok" else expect)
    assert outcome == ("success" if expect == "ok" else "error"), (rc, err[-2000:])
    assert not files["marker"].exists(), "a pickle ran code"
    assert not list(tmp_path.rglob("*.partial")) and not list(Path(files["dir"]).iterdir())
    if expect == "ok":
        assert out.is_file() and json.loads((tmp_path / "out" / "r.json").read_text())["chunks"] >= 1
    else:
        assert not out.exists() and not (tmp_path / "out" / "r.json").exists()  # nothing half-written


def test_case_list_covers_the_issue_classes():
    assert len(CASES) >= 62
    errors = sum(expect != "ok" for _, expect in CASES.values())
    assert errors >= 60


def test_hostile_checkpoint_says_it_contains_code(files, tmp_path, capsys):
    rc, err = run_cli([*BASE, "--checkpoint", str(files["hostile_system"]), *T, "--out",
                       str(tmp_path / "v.safetensors")], capsys)
    assert rc == 2 and "contains code (a pickle with `posix.system`), not loaded" in err
    assert "weights_only" not in err and not files["marker"].exists()
    rc, err = run_cli([*BASE, "--checkpoint", str(files["renamed"]), *T, "--out", str(tmp_path / "v.safetensors")],
                      capsys)
    assert rc == 2 and "a PyTorch pickle under a .safetensors name" in err and "contains code" in err


def test_huge_size_is_refused_in_under_a_second(tmp_path, capsys):
    t0 = time.perf_counter()
    rc, err = run_cli([*BASE, *P, *T, "--width", "100000", "--height", "100000", "--out",
                       str(tmp_path / "v.safetensors")], capsys)
    assert rc == 2 and "--width: at 100000x100000 the rolling memory" in err and "GiB" in err
    assert time.perf_counter() - t0 < 2.0  # model built, then refused; measured about 0.1 s


def test_process_exit_codes_and_debug_traceback(files, tmp_path):
    """As a process: one 'error:' line and exit 2; --debug adds the traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "echo_core", *BASE, *P, *T, "--device", "bogus", "--out",
           str(tmp_path / "v.safetensors")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --device: 'bogus' is not a device; use cpu, cuda or cuda:N"]
    proc = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=env)
    assert proc.returncode == 2 and "Traceback" in proc.stderr and proc.stderr.strip().endswith("cuda:N")


# ------------------------------------------------------------------------------------------------- fuzzing
INTS = st.sampled_from(["0", "-1", "-16", "1", "3", "7", "16", "48", "64", "100", "100000", str(2**64),
                        str(2**70), "nan", "1e3", "abc", "", " 3"])
FLOATS = st.sampled_from(["1", "0", "-1", "nan", "inf", "1e308", "0.5", "x", ""])
TEXTS = st.sampled_from(["a cat", "", "[", "a[1s] | b[1s#] | c[1s@1]", "a[0s]", "|", "a[1s@5]", "a[1s];sub",
                         "\x00\x01", "a" * 5000, "x[1e9s]", "a[1s@] | b[1s]", "日本[1s]"])
PATHS = st.sampled_from(["{dir}", "{dir}/nope", "{garbage.pt}", "{emb}", "{emb_nan}", "{hostile_exec}",
                         "{renamed}", "{tl_ok.txt}", "{cfg_ok.json}", "{cfg_nan.json}", "{plain}/x", "{tl_binary.txt}"])
FLAGS = {"--width": INTS, "--height": INTS, "--frames-per-chunk": INTS, "--seed": INTS,
         "--max-chunks": st.sampled_from(["0", "-1", "1", "30", "abc", ""]),
         "--total-latent-frames": st.sampled_from(["0", "-5", "3", "48", "100000", "abc"]), "--seconds": FLOATS,
         "--steps": st.sampled_from(["1000", "1000,500", "x", "0", "2000", ""]),
         "--device": st.sampled_from(["cpu", "cuda", "bogus", "cpu:0", "meta"]),
         "--memory": st.sampled_from(["echo", "rolling", "full", "flush"]),
         "--text-embeds": PATHS, "--memory-config": PATHS, "--report": PATHS}
SOURCES = st.one_of(st.tuples(st.just("--timeline"), TEXTS), st.tuples(st.just("--prompt"), TEXTS),
                    st.tuples(st.just("--timeline-file"), PATHS))


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(source=SOURCES, extra=st.dictionaries(st.sampled_from(sorted(FLAGS)), st.none(), max_size=4).flatmap(
    lambda keys: st.fixed_dictionaries({k: FLAGS[k] for k in keys})))
def test_fuzz_cli_never_crashes(files, tmp_path_factory, capsys, source, extra):
    d = tmp_path_factory.mktemp("fuzz")
    out = d / "v.safetensors"
    argv = ["generate", "--preset", "tiny-random", "--out", str(out), *source]
    for flag, value in extra.items():
        argv += [flag, value]
    argv = _expand(tuple(argv), files, out)
    if "--width" not in extra and "--height" not in extra:
        argv += ["--width", "32", "--height", "32"]
    if "--steps" not in extra:
        argv += ["--steps", "1000"]
    if "--max-chunks" not in extra:
        argv += ["--max-chunks", "30"]  # successes stay short (a timeline without durations makes 224 chunks)
    rc, err = run_cli(argv, capsys)
    outcome = classify(rc, err)
    OUTCOMES[outcome] = OUTCOMES.get(outcome, 0) + 1
    assert outcome != "crash", (argv[:40], err[-2000:])
    assert not files["marker"].exists() and not list(d.rglob("*.partial"))
    if outcome == "error":
        assert not out.exists()


OUTCOMES: dict[str, int] = {}


def test_fuzz_outcomes_counted():
    """Runs after the fuzz test (file order): both kinds of outcome occurred, no crash."""
    if not OUTCOMES:
        pytest.skip("run together with test_fuzz_cli_never_crashes")
    assert OUTCOMES.get("crash", 0) == 0 and OUTCOMES.get("error", 0) > 0
