"""Adapts a Snakemake `script:` job to its stage functions: the rule's log, clean errors."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from functools import partial

from tracelab.core import progress
from tracelab.core.atomic import is_disk_full, unwritten_path
from tracelab.core.errors import TraceInputError

log = logging.getLogger("tracelab")
CPU_LINE = re.compile(r"process CPU ([0-9.]+) s")


def in_a_job() -> bool:
    """Whether this process runs a Snakemake `script:` job: its preamble puts `snakemake` in
    the script's globals before the script imports this module."""
    return hasattr(sys.modules.get("__main__"), "snakemake")


# pandera imports hypothesis at its first check, only to offer data-synthesis strategies, which
# no job uses: 0.11 CPU s a job where the test extra installed it. Tests keep it.
if in_a_job():
    sys.modules.setdefault("hypothesis", None)


def run_stage(snakemake, stage, **kwargs):
    """Call `stage(**kwargs)` as the job's one step (see run_steps)."""
    run_steps(snakemake, partial(stage, **kwargs))


def run_steps(snakemake, *steps: partial):
    """Call each step in turn, logging to the job's log; bad input exits 1 with one clear line.

    One job runs several steps where they always run together on the same input: a job's
    interpreter start-up and imports cost more than a small trace's work. The log opens with a
    line naming the job and closes with its wall time and the CPU time of its process (every
    thread, start-up and imports included: Snakemake's `benchmark:` files sample CPU once a
    second, then every 30 s, and miss much of a long job's), with progress lines in between
    (every progress_interval_s of the config) while a long step runs.
    """
    # A log that cannot be written (a full disk) must not add a traceback of its own to the
    # job's one line on stderr.
    logging.raiseExceptions = False
    handler = logging.FileHandler(snakemake.log[0], mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    progress.set_interval(snakemake.config["progress_interval_s"])
    job = " ".join([snakemake.rule, *(f"{k}={v}" for k, v in snakemake.wildcards.items())])
    log.info("%s: started", job)
    started = time.monotonic()
    try:
        for step in steps:
            step()
    except TraceInputError as error:
        fail(str(error))
    except OSError as error:
        if not is_disk_full(error):
            log.error("unexpected failure:\n%s", traceback.format_exc())
            raise
        fail(f"no space left on device writing {unwritten_path(error) or 'an output'}")
    except Exception:
        log.error("unexpected failure:\n%s", traceback.format_exc())
        raise
    log.info("%s: finished in %.1f s; %s", job, time.monotonic() - started, cpu_line())
    if in_a_job():
        end_process()


def end_process():
    """End a job's process once its outputs are written and its log closed, without the
    interpreter's teardown: unloading pandas, pyarrow and pandera costs ~0.15 CPU s a job, and
    every job is a process of its own (nothing runs after a script's step)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cpu_line() -> str:
    """The CPU time of this process so far, as a job's log ends with it (`job_cpu_seconds`)."""
    return f"process CPU {time.process_time():.2f} s"


def job_cpu_seconds(log_text: str) -> float | None:
    """The CPU seconds a job's log ends with (`cpu_line`); None if it has none."""
    found = CPU_LINE.findall(log_text)
    return float(found[-1]) if found else None


def fail(message: str):
    """Exit 1 with `message`, one line, in the log and on stderr."""
    log.error("%s", message)
    print(f"tracelab: error: {message}", file=sys.stderr)
    sys.exit(1)
