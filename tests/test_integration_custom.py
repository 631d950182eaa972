"""task=custom end to end on the embedded model: a JSONL file with two-token string labels,
checked, trained with APPO (a tiny schedule), and its prompt applied by `promptrl predict`,
which is killed after a batch and resumed without losing or repeating a row. (The CSV + APE
path is docs/custom_task.md's, run by tests/test_tutorial.py.)"""

from __future__ import annotations

import json
import re
import signal

import pytest

from conftest import TINY, run_cli, write_reviews

pytestmark = pytest.mark.slow


def test_jsonl_labels_of_two_tokens_train_with_appo_and_predict_resumes(tmp_path, shared_data):
    train_file = write_reviews(tmp_path / "reviews.jsonl", per_class=20)
    labelled = write_reviews(tmp_path / "more.jsonl", per_class=6, skip=200)
    task = ["task=custom", f"task.data_files.train={train_file}", "task.input_field=review",
            "task.label_field=verdict", "task.shots=8"]
    schedule = [*TINY, "algo=appo"]
    env = {"HF_HUB_OFFLINE": "1"}

    check = run_cli("check", *task, *schedule, data=shared_data, env=env)
    assert check.returncode == 0, check.stderr[-3000:]
    planned = int(re.search(r"training \(appo\): (\d+) target calls", check.stdout).group(1))

    run = tmp_path / "train"
    r = run_cli("train", *task, *schedule, f"hydra.run.dir={run}", data=shared_data, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["label_words"] == [" thumbs down", " thumbs up"] and results["algo"] == "appo"
    assert results["target_calls"] == planned == 2 * 16  # 1 epoch x 2 prompts x 16 training examples, no check
    prompt_file = run / "best_prompt.txt"
    assert prompt_file.read_text().strip() == results["best_prompt"]

    out = tmp_path / "predict"
    predict = ["predict", *task, f"prompt_file={prompt_file}", f"input_file={labelled}", "batch_size=4",
               "logger.progress=false", f"hydra.run.dir={out}"]
    killed = run_cli(*predict, data=shared_data, env={**env, "PROMPTRL_CRASH_AT": "predict-after-batch:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 8  # two finished batches survive the kill
    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"row": 9, "inp')  # and a torn line, as a kill mid-write would leave
    again = run_cli("predict", f"resume={out}", f"hydra.run.dir={tmp_path / 'predict-log'}", data=shared_data, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == list(range(1, 13))  # every input once
    summary = json.loads((out / "results.json").read_text())
    assert summary["n_inputs"] == summary["n_labelled"] == 12 and summary["target_calls"] == 4  # only the last batch
    assert summary["accuracy"] == sum(r["correct"] for r in rows) / 12
    assert f"accuracy {summary['accuracy']:.4f} on 12 labelled inputs" in again.stdout
