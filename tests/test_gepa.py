"""algo=gepa: the real `gepa` library driving the search through promptrl's adapter and budget."""

import json

import pytest
from omegaconf import OmegaConf
from test_baselines import QualityScorer, ScriptedAgent

from promptrl.algos.gepa import GEPA, PromptAdapter, per_example
from promptrl.config import GEPAConfig
from promptrl.errors import UserError
from promptrl.scoring import reward
from promptrl.scoring.hf import HFScorer

from conftest import make_model, make_tokenizer, run_cli
from test_agent_trainer import make_agent, toy_task

pytest.importorskip("gepa")


def cfg(**over):
    return OmegaConf.merge(OmegaConf.structured(GEPAConfig), over)


def tiny_scorer(task):
    tok = make_tokenizer()
    return HFScorer(make_model(len(tok)), tok, task, "tiny")


def test_per_example_rewards_average_to_the_prompts_reward():
    task = toy_task()
    scores = tiny_scorer(task).score(["the movie"], task.train)
    values = per_example(scores, 10.0, 0.1)
    assert len(values) == len(task.train)
    assert sum(values) / len(values) == pytest.approx(reward(scores, 10.0, 0.1).item(), abs=1e-5)


def test_adapter_scores_through_the_scorer_and_feeds_back_the_gold_labels():
    task = toy_task()
    scorer = tiny_scorer(task)
    adapter = PromptAdapter(task, scorer, 10.0, 0.1)
    out = adapter.evaluate(task.train[:3], {"instruction": "the movie"}, capture_traces=True)
    assert scorer.calls == 3 and len(out.scores) == 3 and len(out.trajectories) == 3
    data = adapter.make_reflective_dataset({"instruction": "the movie"}, out, ["instruction"])
    rows = data["instruction"]
    assert [r["Inputs"] for r in rows] == [e.text for e in task.train[:3]]
    for r, ex in zip(rows, task.train[:3]):
        gold = task.label_words[ex.label].strip()
        assert r["Generated Outputs"] in ("bad", "good")
        assert (r["Feedback"].startswith("Correct") and r["Generated Outputs"] == gold) or f"correct answer is {gold!r}" in r["Feedback"]
    assert adapter.evaluate(task.train[:2], {"instruction": "x"}).trajectories is None


def test_gepa_keeps_the_better_reflection_and_counts_calls_as_gepa_does(tmp_path):
    """GEPA's loop is the library's: the reflection proposes "good prompt" (accuracy 1) from
    the seed (accuracy 0.25); the child beats its parent on the minibatch, is scored on the Pareto
    set and heads the queue. GEPA's metric calls are promptrl's target calls."""
    task = toy_task()
    scorer = QualityScorer(task, {"classify the sentiment": 0.25, "```\ngood prompt": 1.0, "good prompt": 1.0})
    agent = ScriptedAgent(["good prompt```"] + ["worse```"] * 50)
    rows = []
    g = GEPA(cfg(queue_size=2), task, scorer, agent, tmp_path, budget_calls=40)
    g.tracker = type("T", (), {"log": lambda self, row: rows.append(row)})()
    g.run()
    assert g.finished() and g.queue.prompts[0] == "good prompt"
    assert g.metric_calls == scorer.calls  # both count prompt x example scorings
    assert 40 <= scorer.calls <= 40 + 2 * 3 + len(task.train)  # at most one GEPA iteration past the budget
    assert "I provided an assistant with the following instructions" in agent.queries[0][0]  # GEPA's own prompt
    assert "classify the sentiment" in agent.queries[0][0] and "correct answer is" in agent.queries[0][0]
    assert rows and [r["step"] for r in rows] == list(range(len(rows))) and rows[-1]["target_calls"] == scorer.calls
    assert g.summary()["gepa_metric_calls"] == scorer.calls


def test_a_perfect_score_is_the_best_reward_the_targets_scores_allow(tmp_path, monkeypatch):
    """skip_perfect_score compares a minibatch with GEPA's perfect_score: with written answers (a
    chat target, scoring=generate) there is no margin, so all right is c_a, not c_a + c_s."""
    import gepa as library

    seen = []

    def optimize(**kwargs):
        seen.append(kwargs["perfect_score"])
        raise KeyboardInterrupt  # enough: the search itself is the library's

    monkeypatch.setattr(library, "optimize", optimize)
    task = toy_task()
    for answers in (False, True):
        scorer = QualityScorer(task, {})
        scorer.answers = answers
        with pytest.raises(KeyboardInterrupt):
            GEPA(cfg(), task, scorer, ScriptedAgent([]), tmp_path / str(answers), budget_calls=40).run()
    assert seen == [pytest.approx(10.1), 10.0]


def test_gepa_logs_each_candidates_id_and_parents_as_it_joins_the_pool(tmp_path):
    """Lineage: every candidate GEPA scores on its Pareto set is logged once, with its index as id,
    its parents' indices (none for the seed) and its Pareto-set reward; a parent is always a
    candidate logged before it. Each reflection here improves on its parent: a chain 0-1-2-3."""
    from promptrl.report import Run
    from promptrl.report_html import lineage

    task = toy_task()  # 8 train examples, all of them the Pareto set; minibatches of 3
    quality = {"classify the sentiment": 0.0, "one": 0.34, "two": 0.67, "three": 1.0}
    scorer = QualityScorer(task, {**quality, **{f"```\n{p}": q for p, q in quality.items()}})
    agent = ScriptedAgent(["one```", "two```", "three```"] + ["worse```"] * 50)
    rows = []
    g = GEPA(cfg(queue_size=4), task, scorer, agent, tmp_path, budget_calls=80)
    g.tracker = type("T", (), {"log": lambda self, row: rows.append(row)})()
    g.run()
    logged = [(i, p, parents, r, row["step"]) for row in rows if "prompt_ids" in row
              for i, p, parents, r in zip(row["prompt_ids"], row["prompts"], row["prompt_parents"], row["prompt_rewards"])]
    assert len(logged) == g.candidates >= 4
    assert all(len(row["prompts"]) == len(row["prompt_parents"]) == len(row["prompt_rewards"]) for row in rows if "prompts" in row)
    ids = [i for i, *_ in logged]
    assert ids == [str(k) for k in range(len(ids))]  # GEPA's candidate indices, as strings, in the order they joined
    assert logged[0][:3] == ("0", "classify the sentiment", [])  # the seed: no parents
    for k, (_, _, parents, _, _) in enumerate(logged[1:], start=1):
        assert parents and set(parents) <= set(ids[:k])  # every parent logged before its child
    assert [(p, parents) for _, p, parents, _, _ in logged[:4]] == [
        ("classify the sentiment", []), ("one", ["0"]), ("two", ["1"]), ("three", ["2"])]
    assert [r for *_, r, _ in logged[:4]] == sorted(r for *_, r, _ in logged[:4]) and logged[3][3] == g.queue.items[0]["reward"]
    assert rows and [r["step"] for r in rows] == list(range(len(rows))) and rows[-1]["target_calls"] == scorer.calls
    nodes = lineage(Run(tmp_path, {"algo": {"name": "gepa"}}, None, rows))
    assert set(nodes) == set(ids) and nodes["3"]["parents"] == ["2"] and nodes["3"]["prompt"] == "three"
    # a budget spent on the seed alone: no iteration runs, the seed still gets its row
    rows.clear()
    g = GEPA(cfg(), task, QualityScorer(task, {}), ScriptedAgent([]), tmp_path, budget_calls=len(task.train))
    g.tracker = type("T", (), {"log": lambda self, row: rows.append(row)})()
    g.run()
    assert [(r["step"], r["prompt_ids"], r["prompt_parents"]) for r in rows] == [(0, ["0"], [[]])]


def test_gepa_with_the_tiny_agent_as_reflection_lm(tmp_path):
    task = toy_task()
    scorer = tiny_scorer(task)
    g = GEPA(cfg(max_metric_calls=30, reflection_minibatch_size=2), task, scorer, make_agent(max_new_tokens=5), tmp_path)
    g.run()
    assert g.reflections >= 1 and g.queue.items and 30 <= scorer.calls == g.metric_calls <= 30 + 4 + len(task.train)


def test_gepa_needs_a_budget_and_checks_its_settings(tmp_path):
    task = toy_task()
    with pytest.raises(UserError, match="needs a budget"):
        GEPA(cfg(), task, QualityScorer(task, {}), ScriptedAgent([]), tmp_path)
    with pytest.raises(UserError, match="candidate_selection_strategy"):
        GEPA.check_config(cfg(candidate_selection_strategy="best"))
    with pytest.raises(UserError, match="<side_info>"):
        GEPA.check_config(cfg(reflection_prompt_template="improve <curr_param>"))


@pytest.mark.slow
def test_train_algo_gepa_on_the_embedded_model_within_budget(tmp_path, shared_data):
    """The seed on GEPA's Pareto set (SST-2's 32 training examples), then GEPA iterations until the
    budget: one or two reflections of the embedded agent, the final evaluation and results.json."""
    run = tmp_path / "run"
    r = run_cli("train", "algo=gepa", "task=sst2", "budget.target_calls=40", "agent.max_new_tokens=16", "algo.queue_size=2",
                "task.max_test_examples=16", "logger.progress=false", f"hydra.run.dir={run}", data=shared_data)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((run / "results.json").read_text())
    assert res["algo"] == "gepa" and res["budget_target_calls"] == 40
    per_iteration = 2 * 3 + 32  # two minibatch scorings and the Pareto set
    assert 40 <= res["target_calls"] <= 40 + per_iteration and res["target_calls"] == res["gepa_metric_calls"]
    assert res["reflections"] >= 1 and res["best_prompt"] is not None and 0 <= res["test_accuracy"] <= 1
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == res["steps"] >= 1 and rows[-1]["target_calls"] == res["target_calls"]
    assert "Proposed new text for instruction" in (run / "train.log").read_text()  # GEPA's own log, in the file
