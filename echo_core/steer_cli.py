"""`--steer FILE` for `python -m echo_core generate` and `demo`: replay timed edits on a run, write the final text.

The file holds one JSON edit per line with the chunk before which it applies (echo_core.steering), e.g.

    {"chunk": 4, "action": "cut", "prompt": "a yellow square moving left on a green checkered background", "seconds": 3}
    {"chunk": 9, "action": "recall", "scene": 1}
    {"chunk": 14, "action": "stop"}

Beside the output goes `<out>.timeline.txt`: the timeline as generated. The same seed with that text through
--timeline reproduces the steered output exactly.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from echo_core.errors import InputError, quote
from echo_core.steer_control import Encoder, Steering
from echo_core.steering import MAX_STEER_BYTES, read_steer_script

TIMELINE_SUFFIX = ".timeline.txt"


def add_steer_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steer", type=Path, default=None,
                   help="JSON-lines file of timed edits: {\"chunk\": N, \"action\": \"smooth\"|\"cut\", \"prompt\": "
                        "..., \"seconds\": S}, {\"chunk\": N, \"action\": \"recall\", \"scene\": K|\"auto\"}, "
                        "{\"chunk\": N, \"action\": \"stop\"}; writes <out>" + TIMELINE_SUFFIX)


def steering_from_args(args: argparse.Namespace, text: str, encode: Encoder | None,
                       encode_routing: Encoder | None, default_mode: str = "smooth") -> Steering | None:
    """The run's steering for --steer (None without it)."""
    path = getattr(args, "steer", None)
    if path is None:
        return None
    try:
        if path.stat().st_size > MAX_STEER_BYTES:
            raise InputError("--steer", f"{quote(str(path))} is larger than {MAX_STEER_BYTES:,} bytes; a steering "
                                        "script is a few lines of JSON")
        script = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError("--steer", f"cannot read {quote(str(path))}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError("--steer", f"{quote(str(path))} is not UTF-8 text") from None
    edits = read_steer_script(script, label="--steer")
    return Steering(encode=encode, encode_routing=encode_routing, script=edits, text=text,
                    default_mode=default_mode, script_label="--steer")


def write_timeline_text(out: Path, text: str) -> str:
    """Write the final timeline beside `out` (atomically); returns its path."""
    path = out.with_name(out.name + TIMELINE_SUFFIX)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise InputError("--out", f"cannot write {quote(str(path))}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return str(path)
