"""`promptrl train ... --plan`: the cost plan of a run or a sweep, and that runs then spend what it said."""

import json

import pytest
import yaml
from omegaconf import OmegaConf

from promptrl.check import estimate_seconds, plan_calls, run_plan
from promptrl.cli import CONF_DIR
from promptrl.errors import UserError

from conftest import make_model, make_tokenizer, run_cli


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny random Llama of the unit tests as a model directory, so the CLI runs it in seconds."""
    path = tmp_path_factory.mktemp("tiny-model")
    tok = make_tokenizer()
    make_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny(path, cache):
    return [f"agent.model={path}", "agent.name=tiny", "agent.gguf_package=null", f"target.model={path}", "target.name=tiny",
            "target.gguf_package=null", f"cache_dir={cache}", "agent.max_new_tokens=8", "task.max_test_examples=16",
            "algo.queue_size=1", "logger.progress=false", "checkpoint_every=0"]


def test_sweep_plan_lists_every_job_of_an_experiment_and_the_total(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    jobs = run_plan(CONF_DIR, ["experiment=compare_sst2"], multirun=True, history=tmp_path)
    assert len(jobs) == 6 * 3 and {j["job"].split()[0] for j in jobs} >= {"algo=gepa", "algo=appo", "algo=manual"}
    for j in jobs:
        manual = "algo=manual" in j["job"]
        assert j["train"] == (0 if manual else 1024) and j["final"] == (3 + 2) * (32 + 300)
        assert j["seconds"] is None  # no earlier runs under tmp_path to time it by
    gepa = next(j for j in jobs if "algo=gepa" in j["job"])
    assert gepa["schedule"] is None and gepa["train"] == gepa["budget"] == 1024  # GEPA: the budget is its schedule


def test_optuna_plan_is_the_search_spaces_grid_and_its_trials(shared_data, monkeypatch, tmp_path, capsys):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    jobs = run_plan(CONF_DIR, ["experiment=search_appo_sst2"], multirun=True, history=tmp_path)
    assert len(jobs) == 3 * 4  # prompts_per_step choice(2, 4, 8) x update_term range(1, 5)
    assert all(j["train"] == 1024 for j in jobs)
    assert "20 trials" in capsys.readouterr().out


def test_gepa_without_any_budget_is_refused_by_the_plan(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    with pytest.raises(UserError, match="set budget.target_calls"):
        run_plan(CONF_DIR, ["algo=gepa"], multirun=False, history=tmp_path)


def test_time_estimate_is_the_median_rate_of_matching_earlier_runs(tmp_path):
    from promptrl.check import earlier_runs

    for i, (algo, train_s) in enumerate([("appo", 100.0), ("appo", 300.0), ("ape", 1.0)]):
        run = tmp_path / str(i)
        run.mkdir()
        (run / "results.json").write_text(json.dumps({"target": "t", "agent": "a", "algo": algo, "target_calls": 100,
                                                      "target_calls_with_eval": 200, "train_time_s": train_s,
                                                      "wall_time_s": train_s + 50}))
        (run / "config_resolved.yaml").write_text(yaml.safe_dump({"target": {"backend": "hf"}}))
    cfg = OmegaConf.create({"target": {"name": "t", "backend": "hf"}, "agent": {"name": "a"}, "algo": {"name": "appo"}})
    seconds, basis = estimate_seconds(cfg, {"train": 10, "final": 20}, earlier_runs(tmp_path))
    assert basis == 2 and seconds == pytest.approx(10 * 2.0 + 20 * 0.5)  # median 2 s/call training, 0.5 s/call evaluating
    other = OmegaConf.merge(cfg, {"target": {"backend": "vllm"}})
    assert estimate_seconds(other, {"train": 10, "final": 20}, earlier_runs(tmp_path)) == (None, 0)


# the tiny model, not the embedded one: not `slow` (about a minute)
def test_planned_calls_are_what_runs_report(tmp_path, shared_data, tiny_dir, monkeypatch):
    """The plan's training calls equal results.json's target_calls: APPO stopped by the budget
    after an anchor check, PPO by its schedule (one sweep, planned job by job), APE by the budget.
    Then the plan times the same jobs from these runs."""
    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    common = tiny(tiny_dir, tmp_path / "cache")
    rl = [*common, "algo.epochs=2", "algo.batch_size=16", "algo.prompts_per_step=2", "algo.update_term=1",
          "algo.anchor_eval_prompts=1", "algo.ppo_epochs=1", "budget.target_calls=160"]
    ape = [*common, "algo=ape", "algo.num_candidates=8", "algo.prompts_per_step=2", "algo.eval_examples=8",
           "budget.target_calls=48"]
    planned = run_plan(CONF_DIR, ["algo=appo,ppo", *rl], multirun=True, history=tmp_path)
    planned += run_plan(CONF_DIR, ape, multirun=False, history=tmp_path)
    # APPO: 2 steps of 32, a dev check of 64, then the budget; PPO: its 4 steps; APE: 3 steps of 16
    assert [j["train"] for j in planned] == [160, 128, 48]
    r = run_cli("train", "-m", "algo=appo,ppo", *rl, f"hydra.sweep.dir={tmp_path / 'rl'}", data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("train", *ape, f"hydra.run.dir={tmp_path / 'ape'}", data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    results = [json.loads((tmp_path / d / "results.json").read_text()) for d in ("rl/0", "rl/1", "ape")]
    assert [r["algo"] for r in results] == ["appo", "ppo", "ape"]
    assert [r["target_calls"] for r in results] == [j["train"] for j in planned]
    assert all(r["target_calls_with_eval"] - r["target_calls"] <= j["final"] for r, j in zip(results, planned))
    # tokens: the plan is an upper bound of what the ledger counted (instructions at agent.max_new_tokens),
    # with the tokenizer on disk (exact counting, no ≈), and local models cost no money
    for r, j in zip(results, planned):
        plan, cost = j["cost"], r["cost"]
        assert plan["exact_tokens"] and plan["usd"] is None and cost["usd"] is None
        assert cost["target_calls"] == r["target_calls_with_eval"] <= plan["target_calls"]
        assert 0 < cost["target_input_tokens"] <= plan["target_input_tokens"]
        assert 0 < cost["agent_output_tokens"] <= plan["agent_output_tokens"]
        assert 0 < cost["agent_input_tokens"] <= 1.1 * plan["agent_input_tokens"]
    timed = run_plan(CONF_DIR, ape, multirun=False, history=tmp_path)
    assert timed[0]["seconds"] > 0 and timed[0]["basis"] == 1


def test_plan_option_prints_the_plan_and_runs_nothing(tmp_path, shared_data):
    r = run_cli("train", "algo=ape", "budget.target_calls=100", f"hydra.run.dir={tmp_path / 'run'}", "--plan", data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cost plan" in r.stdout and "100 (budget)" in r.stdout and not (tmp_path / "run").exists()


def test_plan_calls_of_one_run_follow_the_budget(shared_data, monkeypatch):
    from hydra import compose, initialize_config_dir

    from promptrl.tasks import load_task

    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["algo=opro", "algo.steps=2", "algo.prompts_per_step=2"])
    task = load_task(cfg.task, cfg.seed)
    assert plan_calls(cfg, task)["train"] == (1 + 2 * 2) * 32  # the initial instruction and 2 x 2 proposals on train
    cfg.budget.target_calls = 64
    assert plan_calls(cfg, task)["train"] == 64


def test_plan_counts_every_group_of_a_grpo_step(shared_data, monkeypatch):
    """--plan for algo=grpo: groups_per_step x group_size prompts a step on each training example,
    plus APPO's anchor checks; algo=appo keeps its one group of prompts_per_step."""
    from hydra import compose, initialize_config_dir

    from promptrl.tasks import load_task

    monkeypatch.setenv("PROMPTRL_DATA", str(shared_data))
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        grpo = compose("train", overrides=["algo=grpo", "algo.group_size=3", "algo.groups_per_step=5", "algo.epochs=4",
                                           "algo.update_term=1"])
        appo = compose("train", overrides=["algo=appo", "algo.prompts_per_step=3", "algo.epochs=4", "algo.update_term=1"])
    task = load_task(grpo.task, grpo.seed)
    n, checks = len(task.train), 3 * 2 * 4 * len(task.dev)  # a dev check after each epoch but the last, 4 + 4 prompts
    assert plan_calls(grpo, task)["train"] == 4 * 5 * 3 * n + checks
    assert plan_calls(appo, task)["train"] == 4 * 3 * n + checks
