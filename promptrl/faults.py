"""Named crash points for the kill-and-resume tests.

`PROMPTRL_CRASH_AT=<point>[:<n>]` makes the process SIGKILL itself the n-th time (default 1st)
it passes `<point>` — exactly what a power cut or an OOM kill does, at a moment a test can name.
Unset (always, outside tests), `crash_point` is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    spec = os.environ.get("PROMPTRL_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
