"""`snakemake -n` without its start-up: this process imports Snakemake once, then for each
request forks one child per dry run, which runs Snakemake's command line (`snakemake.cli.main`,
what `python -m snakemake` runs) in its folder, its output in a file. The workflow's own package
is not imported here, so each child imports the copy it runs (an edited module included).

Protocol (conftest.py speaks it): a JSON line [[folder, [args…], output file], …] on stdin, the
children's return codes as a JSON line on stdout; end of input ends the process."""

from __future__ import annotations

import json
import os
import signal
import sys

import pandas  # noqa: F401  imported once for every child: the rules' helpers use them
import pyarrow.parquet  # noqa: F401
import snakemake.cli

TIMEOUT_S = 300


def start(folder: str, args: list[str], output: str) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        signal.alarm(TIMEOUT_S)  # a hung dry run dies rather than hangs the session
        os.chdir(folder)
        sys.path[0] = folder  # as `python -m snakemake` run there has it
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        snakemake.cli.main(args)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main() -> None:
    for line in sys.stdin:
        sys.stdout.flush()  # nothing buffered may be copied into a child
        pids = [start(*run) for run in json.loads(line)]
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        print(json.dumps(codes), flush=True)


if __name__ == "__main__":
    main()
