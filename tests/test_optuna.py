"""hydra/sweeper=optuna: a study over APPO's hyperparameters whose objective is the dev score."""

import csv
import json

import pytest
import yaml
from test_plan import tiny, tiny_dir  # noqa: F401 (the fixture)

from conftest import run_cli

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")


# the tiny model, not the embedded one: not `slow` (about a minute)
def test_a_two_trial_study_on_a_tiny_model_returns_the_dev_score(tmp_path, shared_data, tiny_dir):  # noqa: F811
    sweep = tmp_path / "study"
    r = run_cli("train", "-m", "experiment=search_appo_sst2", *tiny(tiny_dir, tmp_path / "cache"), "hydra.sweeper.n_trials=2",
                "algo.epochs=1", "algo.batch_size=16", "algo.ppo_epochs=1", "budget.target_calls=32",
                f"hydra.sweep.dir={sweep}", data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    trials = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2)]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == max(t["dev_accuracy"] for t in trials)  # the objective is results.json's dev_accuracy
    assert set(best["best_params"]) == {"algo.learning_rate", "algo.update_threshold", "algo.rollback_threshold",
                                        "algo.update_term", "algo.init_kl_coef", "algo.prompts_per_step"}
    configs = [yaml.safe_load((sweep / str(i) / "config_resolved.yaml").read_text())["algo"] for i in range(2)]
    assert configs[0]["learning_rate"] != configs[1]["learning_rate"]  # two draws of the search space
    assert all(1e-5 <= c["learning_rate"] <= 1e-3 and c["prompts_per_step"] in (2, 4, 8) for c in configs)
    report = run_cli("report", str(sweep), "--by", "algo.prompts_per_step", "--no-plots")
    assert report.returncode == 0, report.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "report" / "report.csv").open()))
    assert sum(int(r["runs"]) for r in rows) == 2 and {int(r["algo.prompts_per_step"]) for r in rows} == {
        c["prompts_per_step"] for c in configs}
