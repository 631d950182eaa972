"""Resumable sweeps: a multirun launched again over the same hydra.sweep.dir skips the jobs that
finished, resumes the killed one from its checkpoint and runs the rest (promptrl.train.earlier_launch)."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from promptrl.cli import CONF_DIR
from promptrl.errors import UserError
from promptrl.rundir import earlier_launch, save_run_info, write_json

from conftest import TINY, run_cli


def composed(*overrides):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_a_job_directory_is_finished_interrupted_or_new(tmp_path):
    cfg = composed("seed=3")
    assert earlier_launch(tmp_path, cfg) == "none"
    save_run_info(tmp_path, cfg)
    assert earlier_launch(tmp_path, cfg) == "none"  # a config but no checkpoint: nothing to keep
    (tmp_path / "checkpoints").mkdir()
    torch.save({}, tmp_path / "checkpoints" / "ckpt-0000002.pt")
    assert earlier_launch(tmp_path, cfg) == "interrupted"
    # how the run is watched does not make it another run
    assert earlier_launch(tmp_path, composed("seed=3", "logger.progress=false")) == "interrupted"
    write_json(tmp_path / "results.json", {"test_accuracy": 0.5})
    assert earlier_launch(tmp_path, cfg) == "finished"


def test_a_failed_job_runs_again_and_its_failure_is_kept_aside(tmp_path):
    cfg = composed()
    save_run_info(tmp_path, cfg)
    write_json(tmp_path / "failed.json", {"error": "out of memory"})
    assert earlier_launch(tmp_path, cfg) == "none"
    assert not (tmp_path / "failed.json").exists()  # promptrl report no longer counts it as failed
    assert json.loads((tmp_path / "failed-earlier.json").read_text())["error"] == "out of memory"


def test_a_directory_holding_another_configs_work_is_an_error_not_overwritten(tmp_path):
    save_run_info(tmp_path, composed("seed=1", "algo.update_threshold=0.1"))
    write_json(tmp_path / "results.json", {"test_accuracy": 0.5})
    with pytest.raises(UserError, match=r"different config \(differs at algo\.update_threshold, seed\).*same order"):
        earlier_launch(tmp_path, composed("seed=2"))
    assert (tmp_path / "results.json").exists()


def test_a_setting_added_by_a_later_promptrl_does_not_make_it_another_run(tmp_path):
    """A study resumed across sessions meets code with new options: a key only one of the two
    configs has is not a difference; a changed value still is."""
    cfg = composed("seed=1")
    save_run_info(tmp_path, cfg)
    saved_path = tmp_path / "config_resolved.yaml"
    saved = OmegaConf.to_container(OmegaConf.load(saved_path))
    saved["an_option_removed_since"] = 3
    del saved["algo"]["queue_rescore"]  # an option added since the run was launched
    saved_path.write_text(OmegaConf.to_yaml(saved))
    write_json(tmp_path / "results.json", {"test_accuracy": 0.5})
    assert earlier_launch(tmp_path, cfg) == "finished"
    with pytest.raises(UserError, match=r"differs at seed\)"):
        earlier_launch(tmp_path, composed("seed=2"))


@pytest.mark.slow
def test_killed_sweep_launched_again_runs_each_job_exactly_once(tmp_path, shared_data):
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=cpu_demo", *TINY, "seed=0,1,2", f"hydra.sweep.dir={sweep}"]
    env = {"HF_HUB_OFFLINE": "1"}
    # 4 steps a job: the 6th step of the sweep is job 1's second; the kill ends the whole sweep
    r = run_cli("train", *args, data=shared_data, env={**env, "PROMPTRL_CRASH_AT": "mid-step:6"})
    assert r.returncode == -9, r.stderr[-2000:]
    assert (sweep / "0" / "results.json").exists() and not (sweep / "1" / "results.json").exists()
    assert not (sweep / "2").exists()
    finished = (sweep / "0" / "results.json").read_bytes()

    r = run_cli("train", *args, data=shared_data, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{sweep / '0'} already holds this run's results.json; skipped" in r.stdout
    assert (sweep / "0" / "results.json").read_bytes() == finished  # not run again
    logs = {j: (sweep / str(j) / "train.log").read_text() for j in range(3)}
    assert logs[1].count(f"resuming from {sweep / '1' / 'checkpoints' / 'ckpt-0000001.pt'}") == 1
    assert "resuming" not in logs[0] + logs[2]
    for j in range(3):
        rows = [json.loads(l) for l in (sweep / str(j) / "metrics.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows if "anchor" not in row] == [0, 1, 2, 3], j  # each step once
        assert json.loads((sweep / str(j) / "results.json").read_text())["seed"] == j

    r = run_cli("report", str(sweep), "--no-plots")
    assert r.returncode == 0, r.stderr
