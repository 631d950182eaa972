"""Instruction induction, BIG-Bench II and TTE end to end on the embedded model (small budgets)."""

import json

import pytest

from conftest import TINY, run_cli

pytestmark = pytest.mark.slow

# The shared tiny schedule with a smaller batch and queue: these tasks' train splits are small.
TASK_TINY = [*TINY, "algo.batch_size=4", "algo.queue_size=2", "task.max_test_examples=8"]


def cli(shared_data, *args):
    r = run_cli(*args, data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("task", ["ii_antonyms", "ii_informal_to_formal"])
def test_eval_of_the_ape_annotation_writes_a_task_score(task, tmp_path, shared_data):
    cli(shared_data, "eval", f"task={task}", "task.max_test_examples=8", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["metric"] in ("em", "f1") and res["n_test"] == 8
    manual = next(p for p in res["prompts"] if p["name"] == "manual")
    assert manual["prompt"] and 0.0 <= manual["test_accuracy"] <= 1.0
    assert res["manual_test_accuracy"] == manual["test_accuracy"]


@pytest.mark.parametrize("task, budget", [("ii_antonyms", 8), ("bbii_navigate", 8)])
def test_train_on_induction_tasks_evaluates_on_held_out_data(task, budget, tmp_path, shared_data):
    cli(shared_data, "train", f"task={task}", *TASK_TINY, f"budget.target_calls={budget}", f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["task"] == task and res["steps"] == 1 and res["n_test"] == 8
    assert res["queue"] and 0.0 <= res["test_accuracy"] <= 1.0 and res["paper_test_accuracy"] >= res["test_accuracy"]
    assert res["metric"] == ("em" if task.startswith("ii_") else "accuracy")


def test_tte_trains_and_writes_one_prompt_per_test_input(tmp_path, shared_data):
    cli(shared_data, "train", "algo=tte", "task=sst2", *TASK_TINY, "algo.batch_size=1", "budget.target_calls=4",
        f"hydra.run.dir={tmp_path}")
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["algo"] == "tte" and res["steps"] == 2 and res["protocol"] == "one prompt per input"
    rows = [json.loads(line) for line in (tmp_path / "tte_test_prompts.jsonl").read_text().splitlines()]
    assert len(rows) == res["n_test"] == 8 and len({r["id"] for r in rows}) == 8
    assert res["test_accuracy"] == pytest.approx(sum(r["score"] for r in rows) / 8)
