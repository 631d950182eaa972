"""Failures of the world around a run: a full disk, an unreachable wandb, NaN scores."""

import errno
import logging
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from test_baselines import QualityScorer, ScriptedAgent

import promptrl.checkpoint as checkpoint
from promptrl.algos.ape import APE
from promptrl.algos.opro import OPRO
from promptrl.checkpoint import load_latest_checkpoint
from promptrl.cli import _report_errors
from promptrl.config import APEConfig, OPROConfig
from promptrl.tracking import Tracker

from test_agent_trainer import make_trainer, toy_task


def test_disk_full_on_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    trainer = make_trainer(tmp_path)
    trainer.step = 1
    trainer.save()

    def full_disk(fd, mode):
        import os
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "fdopen", full_disk)
    trainer.step = 2
    with pytest.raises(SystemExit) as exit_info:
        _report_errors(lambda cfg: trainer.save(), None)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "the last saved is ckpt-0000001.pt" in err[0]
    assert "checkpoint_every=0" in err[0]
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["ckpt-0000001.pt"]  # no temp file left behind
    assert load_latest_checkpoint(tmp_path / "checkpoints")["step"] == 1


def test_unreachable_wandb_falls_back_to_offline_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("WANDB_API_KEY", "fake-key-for-an-unreachable-server-0123456789")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "5")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = SimpleNamespace(wandb=True, project="promptrl-test", entity=None, group=None, tags=[], mode="online")
    with caplog.at_level(logging.WARNING, logger="promptrl.tracking"):
        t = Tracker(tmp_path, cfg, config={"seed": 0})
    t.log({"step": 0, "reward_mean": 1.0})
    t.close()
    assert any("wandb init failed" in r.message and "logging offline" in r.message for r in caplog.records)
    assert list((tmp_path / "wandb").glob("offline-run-*"))


class NaNScorer(QualityScorer):
    def score(self, prompts, examples):
        scores = super().score(prompts, examples)
        scores.label_logprobs[:] = float("nan")
        return scores


@pytest.mark.parametrize("algo", ["ape", "opro"])
def test_nan_scores_leave_candidates_unranked_not_a_crash(algo):
    task = toy_task()
    agent = ScriptedAgent([f"p{i}" for i in range(20)])
    if algo == "ape":
        run = APE(OmegaConf.structured(APEConfig(num_candidates=4, prompts_per_step=2, eval_examples=4)), task,
                  NaNScorer(task, {}), agent, None)
    else:
        run = OPRO(OmegaConf.structured(OPROConfig(steps=2, prompts_per_step=2)), task, NaNScorer(task, {}), agent, None)
    run.run()
    assert run.queue.items == []
    assert run.scorer.calls > 0


def test_interrupt_while_checkpointing_leaves_no_temp_file(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path)

    def interrupted(obj, f):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):  # not turned into a UserError: Ctrl-C stays Ctrl-C
        trainer.save()
    assert not list((tmp_path / "checkpoints").glob(".ckpt-*.tmp"))


def test_a_stall_point_sleeps_on_its_nth_pass_only(monkeypatch):
    """PROMPTRL_STALL_AT (the time-limit test of tests/test_slurm.py): one slow pass, then none."""
    import time

    import promptrl.faults as faults

    monkeypatch.setenv("PROMPTRL_STALL_AT", "mid-step:2")
    monkeypatch.setattr(faults, "STALL_S", 0.5)
    monkeypatch.setattr(faults, "_hits", {})
    took = []
    for point in ("mid-step", "between-dev-and-test", "mid-step", "mid-step"):
        start = time.monotonic()
        faults.crash_point(point)
        took.append(time.monotonic() - start)
    assert took[2] >= 0.5 and max(took[:2] + took[3:]) < 0.1, took
