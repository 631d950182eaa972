"""SIGTERM / Ctrl-C during training: the step in progress finishes, a checkpoint of it is
written, and the run ends with Interrupted (exit 128 + signal); a second signal stops at once.
The end-to-end case (the real CLI, resumed to the uninterrupted result) is in test_faults.py."""

import os
import signal
import threading

import pytest
from test_baselines import QualityScorer, ScriptedAgent, cfg

from promptrl.algos.ape import APE
from promptrl.checkpoint import load_latest_checkpoint
from promptrl.config import APEConfig
from promptrl.interrupts import Interrupted, StopRequests

from test_agent_trainer import toy_task


class SignalOnCall(QualityScorer):
    """Sends `signum` to this process from inside its `at`-th score call: mid-step, as a user's
    `kill` or Ctrl-C would arrive."""

    def __init__(self, task, signum, at):
        super().__init__(task, {})
        self.signum, self.at, self.n = signum, at, 0

    def score(self, prompts, examples):
        self.n += 1
        if self.n == self.at:
            os.kill(os.getpid(), self.signum)
        return super().score(prompts, examples)


def ape(scorer, out_dir, checkpoint_every):
    return APE(cfg(APEConfig, num_candidates=10, prompts_per_step=2, eval_examples=4, queue_size=2), toy_task(),
               scorer, ScriptedAgent([f"prompt {i}" for i in range(10)]), out_dir, checkpoint_every=checkpoint_every)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_step_finishes_the_step_and_checkpoints_it(signum, tmp_path):
    trainer = ape(SignalOnCall(toy_task(), signum, at=3), tmp_path, checkpoint_every=4)
    with pytest.raises(Interrupted) as stopped:
        trainer.run()
    assert stopped.value.exit_code == 128 + signum
    assert trainer.step == 3  # the third step, during which the signal came, was finished
    assert f"stopped by {signal.Signals(signum).name} after step 3 of 5" in str(stopped.value)
    state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["step"] == 3 and len(state["extra"]["stats"]) == 6  # off the periodic schedule (4)
    assert signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler)  # handlers given back


def test_a_run_that_never_checkpoints_stops_without_one_and_says_so(tmp_path):
    trainer = ape(SignalOnCall(toy_task(), signal.SIGTERM, at=1), tmp_path, checkpoint_every=0)
    with pytest.raises(Interrupted, match=r"after step 1 of 5; no checkpoint written \(checkpoint_every=0\)"):
        trainer.run()
    assert not (tmp_path / "checkpoints").exists()


def test_a_run_without_signals_is_unchanged(tmp_path):
    trainer = ape(QualityScorer(toy_task(), {"prompt 3": 1.0}), tmp_path, checkpoint_every=2)
    trainer.run()
    assert trainer.step == 5 and trainer.queue.prompts[0] == "prompt 3"
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt")) == ["ckpt-0000002.pt", "ckpt-0000004.pt"]


def test_a_second_ctrl_c_stops_at_once():
    with StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signum == signal.SIGINT  # the first one is only noted
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_handler_someone_else_installed_is_left_alone():
    """submitit ignores SIGTERM in a SLURM job (it requeues on USR2); taking SIGTERM over would end
    a preempted job without its requeue."""
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum is None and seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_nothing_is_installed():
    got = []

    def enter():
        with StopRequests() as stop:
            got.append((stop._previous, signal.getsignal(signal.SIGTERM)))

    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert got == [({}, signal.SIG_DFL)]
