"""Progress on the console for every phase that can take more than a few seconds: training,
the final evaluation (per split, with an ETA), `promptrl eval` and `predict`, model conversion
and loading, `promptrl report`.

One rich `Progress` display is shared by every bar of the process, so a bar opened inside
another (the final evaluation inside a run, a model load inside a sweep job) is one more row of
the same display rather than a second live display, which rich refuses. Bars are drawn on the
terminal only (never through `logging`, so never in `train.log`) and are off with
`logger.progress=false` (`set_enabled`); `promptrl report`, which has no logger settings, turns
them on when its stdout is a terminal (the runs it reads, the figures it draws).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_enabled = False  # on for a command run from the CLI (set_enabled), off for library callers and tests
_display: Progress | None = None
_open = 0
_console: Console | None = None


def set_enabled(enabled: bool, console: Console | None = None) -> None:
    """Bars on or off for this process (a command sets it from `logger.progress`); `console`:
    where they are drawn (default: the terminal)."""
    global _enabled, _console
    _enabled = bool(enabled)
    _console = console


def enabled() -> bool:
    return _enabled


class Bar:
    """One row of the display; every method is a no-op when bars are off."""

    def __init__(self, display: Progress | None = None, task=None):
        self.display, self.task = display, task

    def advance(self, n: float = 1) -> None:
        if self.display is not None:
            self.display.advance(self.task, n)

    def update(self, completed: float | None = None, total: float | None = None, info: str | None = None,
               description: str | None = None) -> None:
        if self.display is None:
            return
        fields = {k: v for k, v in {"completed": completed, "total": total, "description": description}.items() if v is not None}
        if info is not None:
            fields["info"] = info
        self.display.update(self.task, **fields)


@contextmanager
def bar(description: str, total: float | None = None, completed: float = 0, info: str = "") -> Iterator[Bar]:
    """A progress row until the block ends; `total` None shows a spinner and the time so far."""
    global _display, _open
    if not _enabled:
        yield Bar()
        return
    if _display is None:
        _display = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                            console=_console or Console(), transient=False)
        _display.start()
    display = _display
    task = display.add_task(description, total=total, completed=completed, info=info)
    _open += 1
    try:
        yield Bar(display, task)
    finally:
        display.stop_task(task)
        _open -= 1
        if _open == 0:
            display.stop()
            _display = None


def chunks(items: list, parts: int = 20, least: int = 8) -> list[list]:
    """`items` in about `parts` pieces of at least `least`: enough updates for a bar's ETA, few
    enough that each piece is still one large batched call."""
    size = max(least, -(-len(items) // parts))
    return [items[i:i + size] for i in range(0, len(items), size)]
