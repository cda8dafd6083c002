"""Prompt file -> tasks: one per non-blank line, numbered by the file's own 1-based line numbers.

Each line is an official prompt line (spec §6.1, e.g. `A[10s#] | B[10s#] | C[10s@] ...; subtitles`) and is parsed
here with the project's timeline parser, unchanged; a line the parser rejects becomes a task that is recorded as
failed with the parser's message (it never reaches a worker). The seed of a task depends only on (base seed, line
number), so a task's output does not depend on which worker runs it or in which order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from echo_core.errors import InputError
from echo_core.timeline import TimelineError, parse_script

SEED_SALT = "echo-forcing batch seed v1"  # changing it changes every batch's seeds: bump the version if ever


@dataclass(frozen=True)
class BatchTask:
    line: int  # 1-based line number in the prompt file (blank lines are counted but are not tasks)
    text: str  # the line, surrounding whitespace removed
    seed: int
    error: str | None = None  # the timeline parser's message when the line cannot be parsed

    @property
    def name(self) -> str:
        """Folder of this task's outputs inside the batch's output folder."""
        return task_name(self.line)


def task_name(line: int) -> str:
    return f"line-{line:04d}"


def task_seed(base_seed: int, line: int) -> int:
    """A stable seed for (base seed, line): the first 8 bytes of a SHA-256, reduced to 31 bits so that any tool
    (numpy, `generate --seed`) accepts it. Python's hash() would change from process to process."""
    digest = hashlib.sha256(f"{SEED_SALT}:{int(base_seed)}:{int(line)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


def parse_prompt_lines(text: str, base_seed: int) -> list[BatchTask]:
    tasks = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        error = None
        try:
            parse_script(line)
        except TimelineError as e:
            error = str(e)
        tasks.append(BatchTask(number, line, task_seed(base_seed, number), error))
    return tasks


def read_prompt_file(path: Path, base_seed: int) -> list[BatchTask]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError("--prompts", f"file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError("--prompts", f"cannot read {path}: {e}") from None
    tasks = parse_prompt_lines(text, base_seed)
    if not tasks:
        raise InputError("--prompts", f"{path} has no prompt lines (one timeline per line)")
    return tasks
