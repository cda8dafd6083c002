"""Batch generation: a prompt file -> one task per line, run in-process or on a Ray cluster, with a resumable
manifest.

`python -m echo_core batch --prompts FILE --out DIR [--workers N] [--ray ADDRESS|local]`. One module per job:

  tasks.py      prompt file -> tasks (line number, text, parse error, seed derived from (base seed, line))
  settings.py   the run settings every worker gets (model, memory, sampler, size) and their fingerprint
  worker.py     loads the model once, runs one task through `echo_core.run.start_run` -> tensors and bytes
  outputs.py    atomic writes, file digests and read-back checks
  manifest.py   DIR/manifest.jsonl: append-only records, last record per line wins, completeness check
  ray_pool.py   one Ray actor per worker (a GPU each when there are GPUs), tasks streamed to free workers
  driver.py     what to run (resume), retries, writing outputs, progress
  command.py    the `batch` subcommand

Ray is imported only by ray_pool.py, and only when `--ray` is given: `echo_core` imports without it.
Workers return their outputs to the driver, which alone writes DIR: no shared file system is needed for outputs,
and a worker that dies cannot leave anything half-written there.
"""
