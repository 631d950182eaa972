"""Named fault points for the kill-and-resume tests.

`PROMPTRL_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th time (default 1st)
it passes `<point>` — exactly what a power cut or an OOM kill does, at a moment a test can name.
`PROMPTRL_STALL_AT=<point>[:<n>]` makes it sleep there instead (an hour, or until a signal
handler raises): a step slower than the job's time limit, so a test's scheduler stops the job
at that moment whatever the machine's speed (tests/test_slurm.py).
Unset (always, outside tests), `crash_point` is two dictionary lookups.
"""

from __future__ import annotations

import os
import signal
import time

_hits: dict[str, int] = {}
STALL_S = 3600


def _nth_pass(spec: str | None, name: str) -> bool:
    if not spec:
        return False
    point, _, nth = spec.partition(":")
    return point == name and _hits[name] == int(nth or 1)


def crash_point(name: str) -> None:
    crash, stall = os.environ.get("PROMPTRL_CRASH_AT"), os.environ.get("PROMPTRL_STALL_AT")
    if not (crash or stall):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _nth_pass(crash, name):
        os.kill(os.getpid(), signal.SIGKILL)
    if _nth_pass(stall, name):
        time.sleep(STALL_S)
