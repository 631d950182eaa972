"""`promptrl train` end to end on the embedded model, with a schedule small enough for CI."""

import json
import time

import pytest

from promptrl.tracking import source_commit

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow

SMALL_DEMO = ["experiment=cpu_demo", *TINY]


def train(shared_data, *args):
    return run_cli("train", *args, data=shared_data)


def test_train_writes_results_and_resume_finishes_the_same_run(tmp_path, shared_data):
    run = tmp_path / "run"
    started = time.time()
    r = train(shared_data, *SMALL_DEMO, f"hydra.run.dir={run}")
    seconds = time.time() - started
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert 0 < res["train_time_s"] <= res["wall_time_s"] <= seconds  # training counted once in the wall time
    for key in ("task", "target", "algo", "seed", "best_prompt", "dev_accuracy", "test_accuracy", "paper_test_accuracy",
                "manual_test_accuracy", "empty_test_accuracy", "n_test", "target_calls", "target_tokens", "wall_time_s"):
        assert key in res, key
    assert res["n_test"] == 16 and res["steps"] == 4 and res["algo"] == "appo"
    assert res["paper_test_accuracy"] >= res["test_accuracy"]
    assert (run / "best_prompt.txt").read_text() == res["best_prompt"] + "\n"  # what `promptrl predict` reads
    # a quiet console: promptrl's own lines and the table; what the libraries print is in the log file
    assert "Loading weights" not in r.stdout + r.stderr and "best prompt (dev-selected)" in r.stdout
    assert "[promptrl.train][INFO]" in (run / "train.log").read_text()
    # which code made the run: in versions.json and, for every launch, in the log
    commit = json.loads((run / "versions.json").read_text())["promptrl_commit"]
    assert commit == source_commit() and f"promptrl code: {commit or 'installed package'}" in (run / "train.log").read_text()
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "anchor" not in r] == [0, 1, 2, 3]
    assert [r for r in rows if "anchor" in r] == []  # one epoch: no check after the last (it cannot change the result)
    # every step wrote a checkpoint; resuming a finished run trains nothing more and re-evaluates
    r2 = train(shared_data, f"resume={run}", f"hydra.run.dir={tmp_path / 'resume'}", "logger.progress=false")
    assert r2.returncode == 0, r2.stderr[-3000:]
    again = json.loads((run / "results.json").read_text())
    assert again["queue"] == res["queue"] and again["steps"] == 4
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(rows)


def test_bad_resume_path_is_one_line(tmp_path, shared_data):
    r = train(shared_data, "resume=/no/such/run", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 2
    assert "promptrl: error: resume='/no/such/run' is not a run directory with checkpoints/" in r.stderr
