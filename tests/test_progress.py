"""No silent minutes (issue 40): every long phase shows a bar with what it does and an ETA, on
the console only, off with logger.progress=false, its total the budget when one is set."""

from __future__ import annotations

import fcntl
import io
import os
import pty
import re
import struct
import sys
import termios
import time
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from rich.console import Console

from promptrl import progress
from promptrl.algos.base import PromptOptimizer

from conftest import TINY


def console_text(fn) -> str:
    buf = io.StringIO()
    progress.set_enabled(True, Console(file=buf, force_terminal=True, width=160, color_system=None))
    try:
        fn()
    finally:
        progress.set_enabled(False)
    return buf.getvalue()


def test_pieces_are_large_batches_and_enough_for_an_eta():
    assert [len(c) for c in progress.chunks(list(range(1821)))] == [92] * 19 + [73]
    assert [len(c) for c in progress.chunks(list(range(16)))] == [8, 8]
    assert sum(progress.chunks(list(range(50))), []) == list(range(50))


def test_bars_are_off_unless_a_command_turns_them_on():
    with progress.bar("x", total=3) as b:
        b.advance()
        assert b.display is None


def test_a_bar_inside_another_is_a_row_of_the_same_display():
    def nested():
        with progress.bar("outer", total=2) as outer:
            with progress.bar("inner", total=4) as inner:
                assert inner.display is outer.display
                inner.advance(4)
            outer.advance(2)
    text = console_text(nested)
    assert "outer" in text and "inner" in text and "4/4" in text and "2/2" in text


class Counting(PromptOptimizer):
    """An optimiser whose steps each spend 16 target calls, 700 steps by its schedule."""

    needs_agent = False

    def train_step(self):
        self.scorer.calls += 16
        return {}

    def finished(self):
        return self.step >= 700

    def total_steps(self):
        return 700


def trainer(budget):
    cfg = OmegaConf.create({"name": "ape", "queue_size": 5, "baseline_alpha": 0.05, "reward_acc_coef": 10.0,
                            "reward_margin_coef": 0.1, "keep_baseline": False})
    scorer = SimpleNamespace(calls=0, tokens=0, cache_hits=0, cache_misses=0)
    return Counting(cfg, SimpleNamespace(name="sst2"), scorer, None, None, budget_calls=budget, progress=True)


def test_under_a_budget_the_bar_counts_target_calls_up_to_the_budget():
    t = trainer(64)
    text = console_text(t.run)
    assert "ape sst2 (target calls)" in text and "64/64" in text and "/700" not in text
    assert t.step == 4


def test_without_a_budget_the_bar_counts_the_schedules_steps():
    t = trainer(None)
    text = console_text(t.run)
    assert "ape sst2 (steps)" in text and "700/700" in text


@pytest.mark.slow
def test_the_final_evaluation_of_a_cpu_demo_run_talks_on_a_terminal(tmp_path, shared_data):
    """Under a pseudo-terminal, as a person runs it: bars for the final evaluation (dev, then
    test, with counts and an ETA) before the result table; none of it in train.log."""
    run = tmp_path / "run"
    args = ["train", "experiment=cpu_demo", *TINY, "task.max_test_examples=64", "logger.progress=true", f"hydra.run.dir={run}"]
    env = {**os.environ, "PROMPTRL_DATA": str(shared_data), "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: promptrl on the pseudo-terminal
        os.execve(sys.executable, [sys.executable, "-m", "promptrl.cli", *args], env)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))  # a terminal 160 columns wide
    chunks, deadline = [], time.time() + 900
    while time.time() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    (tmp_path / "screen.txt").write_text(screen)
    assert os.waitstatus_to_exitcode(status) == 0, screen[-3000:]
    table = screen.index("appo on sst2: target")  # the result table's title
    dev = re.search(r"final evaluation: dev, (\d+) prompts", screen)
    test = re.search(r"final evaluation: test, (\d+) prompts.*?(\d+)/(\d+)", screen)
    assert dev and test, screen[-3000:]
    prompts = int(test.group(1))  # the queue (distinct prompts, up to 5) and the manual and empty prompt
    assert 3 <= prompts <= 7 and int(test.group(3)) == prompts * 64  # x 64 test sentences
    assert dev.start() < test.start() < table
    assert "eta" in screen[test.start():table]
    assert "final evaluation" not in (run / "train.log").read_text()


def small_sweep(root) -> str:
    """Three finished runs of two methods, with per-step rows to draw."""
    from test_report import fake_run

    steps = lambda base: [{"step": s, "reward_mean": base + s, "best_reward": base + s, "target_calls": 64 * (s + 1)} for s in range(3)]
    for i, (algo, seed) in enumerate([("appo", 0), ("appo", 1), ("ape", 0)]):
        fake_run(root / str(i), algo, seed, 0.7, 1024, steps(i))
    return str(root)


def test_report_shows_a_bar_over_the_runs_read_and_the_figures_drawn(tmp_path):
    from promptrl.report import main as report
    from promptrl.report_html import FIGURES

    sweep = small_sweep(tmp_path / "sweep")
    text = console_text(lambda: report([sweep, "--html"]))
    assert re.search(r"report: reading runs .* 3/3", text), text
    assert re.search(r"report: drawing plots .* 6/6", text), text  # five curves and the dev accuracy
    assert re.search(rf"report: drawing report\.html .* {FIGURES + 3}/{FIGURES + 3}", text), text  # the curves, a lineage per run
    buf = io.StringIO()
    progress.set_enabled(False, Console(file=buf, force_terminal=True, width=160, color_system=None))
    report([sweep, "--html", "--out", str(tmp_path / "quiet")])
    assert buf.getvalue() == "" and (tmp_path / "quiet" / "report.html").is_file()


class Stdout(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_the_report_command_draws_its_bars_on_a_terminal_only(tmp_path, monkeypatch, tty):
    from promptrl.cli import report_main

    sweep = small_sweep(tmp_path / "sweep")
    stdout = Stdout(tty)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert report_main([sweep, "--no-plots"]) == 0
    text = stdout.getvalue()
    assert "wrote " in text and ("report: reading runs" in text) == tty
    assert not progress.enabled()  # a library caller after the command gets no bars
