"""APE, OPRO, the manual baseline and the shared budget rule, on stub agents and scorers."""

import json
import random
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from promptrl.algos.ape import APE, prompts_per_round, stableprompt_candidates, ucb_pick
from promptrl.algos.appo import APPOTrainer
from promptrl.algos.manual import ManualPrompt
from promptrl.algos.opro import OPRO
from promptrl.config import APEConfig, APPOConfig, ManualConfig, OPROConfig
from promptrl.errors import UserError
from promptrl.prompts import extract_instruction, opro_meta_prompt
from promptrl.scoring import ClassificationScores, Scorer
from promptrl.tracking import Tracker

from test_agent_trainer import make_agent, toy_task


class ScriptedAgent:
    """Proposes prompts from a fixed script, in order, and records the queries it was shown."""

    def __init__(self, script):
        self.script = list(script)
        self.queries = []

    def query_ids(self, user, prefix):
        self.queries.append((user, prefix))
        return torch.zeros(1, dtype=torch.long)

    def sample(self, query, n, adapter):
        out, self.script = self.script[:n], self.script[n:]
        return SimpleNamespace(prompts=out)


class QualityScorer(Scorer):
    """A prompt's accuracy is QUALITY[prompt] (default 0.5): it gets that fraction of examples right."""

    def __init__(self, task, quality):
        super().__init__(task, "quality")
        self.quality = quality
        self.scored = []

    def score(self, prompts, examples):
        self.scored.extend(prompts)
        labels = torch.tensor([e.label for e in examples])
        lp = torch.full((len(prompts), len(examples), 2), -5.0)
        for i, p in enumerate(prompts):
            k = round(self.quality.get(p, 0.5) * len(examples))
            right = torch.arange(len(examples)) < k
            lp[i, torch.arange(len(examples)), torch.where(right, labels, 1 - labels)] = -0.1
        self.calls += len(prompts) * len(examples)
        return ClassificationScores(label_logprobs=lp, labels=labels)


def cfg(schema, **over):
    return OmegaConf.merge(OmegaConf.structured(schema), over)


def test_ape_keeps_the_argmax_and_scores_duplicates_once():
    task = toy_task()
    scorer = QualityScorer(task, {"b": 1.0, "c": 0.25, "a": 0.75})
    agent = ScriptedAgent(["a", "b", "c", "b", "d", "a"])
    ape = APE(cfg(APEConfig, num_candidates=6, prompts_per_step=3, eval_examples=4, queue_size=2), task, scorer, agent, None)
    ape.run()
    assert ape.finished() and ape.step == 2
    assert ape.queue.prompts == ["b", "a"]  # the argmax first
    assert sorted(scorer.scored) == ["a", "b", "c", "d"]  # "b" and "a" proposed twice, scored once
    assert scorer.calls == 4 * 4
    assert agent.queries[0][1] == "The instruction was :"
    assert "I gave a friend an instruction" in agent.queries[0][0]


def test_ape_default_candidate_count_matches_stableprompt():
    assert stableprompt_candidates(32) == 100 * 2 * 4  # SST-2 16-shot: 100 epochs x 2 batches x 4 prompts
    task = toy_task()
    ape = APE(cfg(APEConfig), task, QualityScorer(task, {}), ScriptedAgent([]), None)
    assert ape.num_candidates == 100 * 1 * 4


def test_ucb_is_apes_bandit_random_first_then_unpulled_then_the_best_again():
    rng = random.Random(0)
    stats = {f"p{i}": {"n": 0, "sum": 0.0} for i in range(30)}
    first = ucb_pick(stats, 10, 1.0, rng)
    assert len(set(first)) == 10 and first != [f"p{i}" for i in range(10)]  # a random draw, not proposal order
    pulled = set()
    for _ in range(3):  # every round: pull the picked ones once, reward = their index
        picked = first if not pulled else ucb_pick(stats, 10, 1.0, rng)
        assert not pulled & set(picked)  # unpulled candidates have their turn before any repeat
        for p in picked:
            stats[p].update(n=stats[p]["n"] + 8, sum=stats[p]["sum"] + 8 * int(p[1:]), pulls=stats[p].get("pulls", 0) + 1)
        pulled |= set(picked)
    assert pulled == set(stats)
    # all pulled once, equal bonuses: the promising ones (highest mean) are pulled again
    assert set(ucb_pick(stats, 10, 1.0, rng)) == {f"p{i}" for i in range(20, 30)}


def test_ucb_round_size_is_a_fraction_of_the_candidates_or_a_count():
    assert prompts_per_round(0.333, 800) == 266 and prompts_per_round(8, 800) == 8 and prompts_per_round(0.001, 10) == 1


def test_ape_ucb_and_resampling_rounds():
    task = toy_task()
    scorer = QualityScorer(task, {"good": 1.0, "better": 1.0, "bad": 0.0})
    agent = ScriptedAgent(["good", "bad", "better"])
    ape = APE(cfg(APEConfig, num_candidates=2, prompts_per_step=2, evaluation="ucb", ucb_rounds=3,
                  ucb_prompts_per_round=1, ucb_examples_per_round=2, resample_rounds=1, resample_top=1), task, scorer, agent, None)
    ape.run()
    assert ape.step == 1 + 3 + 1
    assert scorer.calls == 3 * 1 * 2 + 1 * 1 * len(ape.eval_set)
    assert ape.stats["good"]["n"] > 0 and ape.stats["bad"]["n"] > 0  # both pulled at least once
    assert "better" in ape.stats and ape.queue.prompts[0] in ("good", "better")
    assert "Generate a variation" in agent.queries[-1][0] and "good" in agent.queries[-1][0]


def test_opro_meta_prompt_lists_the_best_in_ascending_order():
    task = toy_task()
    history = [{"prompt": p, "score": s, "order": i} for i, (p, s) in enumerate([("p50", 50), ("p90", 90), ("p10", 10), ("p70", 70)])]
    text = opro_meta_prompt(history, task, task.train[:2], max_history=3)
    assert "p10" not in text  # only the 3 best are shown
    pos = [text.index(f"text:\np{s}\nscore:\n{s}") for s in (50, 70, 90)]
    assert pos == sorted(pos)  # ascending: the best last, next to the request
    assert "input:\n<INS> input : great movie sentiment :\noutput:\ngood" in text
    assert text.endswith("generally applicable to all problems above.")
    assert extract_instruction(" Classify the review.</INS> trailing", "</INS>") == "Classify the review."


def test_opro_never_rescores_an_instruction():
    task = toy_task()
    scorer = QualityScorer(task, {"": 0.5, "x": 1.0, "y": 0.25})
    agent = ScriptedAgent(["x", "y", "x", "", "x", "y", "z", "z"])
    opro = OPRO(cfg(OPROConfig, steps=2, prompts_per_step=4), task, scorer, agent, None)
    opro.run()
    assert scorer.scored == ["", "x", "y", "z"]
    assert [h["prompt"] for h in opro.history] == ["", "x", "y", "z"]
    assert opro.history[1]["score"] == 100 and opro.queue.prompts[0] == "x"
    assert agent.queries[0][1] == "<INS>"
    assert "text:\nx\nscore:\n100" in agent.queries[1][0]  # the second meta-prompt shows step 1's results


@pytest.mark.parametrize("name", ["ape", "opro", "appo"])
def test_budget_stops_every_optimizer_within_one_step(name, tmp_path):
    task = toy_task()  # 8 train examples
    budget = 50
    if name == "ape":
        scorer = QualityScorer(task, {})
        algo = APE(cfg(APEConfig, num_candidates=100, prompts_per_step=3, eval_examples=4), task, scorer,
                   ScriptedAgent([f"p{i}" for i in range(100)]), tmp_path, budget_calls=budget)
        per_step = 3 * 4
    elif name == "opro":
        scorer = QualityScorer(task, {})
        algo = OPRO(cfg(OPROConfig, steps=100, prompts_per_step=2), task, scorer,
                    ScriptedAgent([f"p{i}" for i in range(300)]), tmp_path, budget_calls=budget)
        per_step = 2 * 8
    else:
        scorer = QualityScorer(task, {})
        algo = APPOTrainer(cfg(APPOConfig, epochs=50, batch_size=4, prompts_per_step=2, update_term=1, ppo_epochs=1,
                               anchor_eval_prompts=2), task, scorer, make_agent(max_new_tokens=3), tmp_path, budget_calls=budget)
        per_step = 2 * 4
    algo.tracker = Tracker(tmp_path, SimpleNamespace(wandb=False))
    algo.run()
    assert budget <= scorer.calls <= budget + per_step
    assert not algo.finished()  # the budget, not the schedule, ended it
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["target_calls"] == scorer.calls


def test_manual_prompt_needs_no_agent_and_no_calls():
    task = toy_task()
    scorer = QualityScorer(task, {})
    manual = ManualPrompt(cfg(ManualConfig), task, scorer, None, None)
    manual.run()
    assert manual.queue.prompts == ["classify the sentiment"] and scorer.calls == 0 and not ManualPrompt.needs_agent


@pytest.mark.parametrize("schema, over, message", [
    (APEConfig, {"evaluation": "thompson"}, r"algo.evaluation='thompson'; expected one of: full, ucb"),
    (APEConfig, {"num_candidates": 0}, r"algo.num_candidates=0; expected >= 1 or null"),
    (APEConfig, {"resample_template": "paraphrase it"}, r"must contain '\{instruction\}'"),
    (OPROConfig, {"prompts_per_step": 0}, r"algo.prompts_per_step=0; expected >= 1"),
    (OPROConfig, {"initial_prompts": []}, r"algo.initial_prompts is empty"),
])
def test_bad_baseline_values(schema, over, message):
    task = toy_task()
    algo = APE if schema is APEConfig else OPRO
    with pytest.raises(UserError, match=message):
        algo(cfg(schema, **over), task, QualityScorer(task, {}), ScriptedAgent([]), None)


def test_opro_resume_continues_the_same_history(tmp_path):
    task = toy_task()
    script = [f"p{i}" for i in range(40)]
    full = OPRO(cfg(OPROConfig, steps=4, prompts_per_step=3), task, QualityScorer(task, {}), ScriptedAgent(script), tmp_path / "a")
    full.run()
    cut = OPRO(cfg(OPROConfig, steps=4, prompts_per_step=3), task, QualityScorer(task, {}), ScriptedAgent(script),
               tmp_path / "b", checkpoint_every=2)
    cut.cfg.steps = 1  # stop after step 2 (steps 0..1) and checkpoint
    cut.run()
    resumed = OPRO(cfg(OPROConfig, steps=4, prompts_per_step=3), task, QualityScorer(task, {}), ScriptedAgent(script[3:]),
                   tmp_path / "b")
    resumed.resume()
    assert resumed.opt_steps == 2
    resumed.run()
    assert [h["prompt"] for h in resumed.history] == [h["prompt"] for h in full.history]
    assert resumed.queue.items == full.queue.items and resumed.scorer.calls == full.scorer.calls


def test_ape_ucb_bonus_is_scaled_to_the_tasks_reward_range():
    from promptrl.scoring import reward_range
    from promptrl.tasks import Example, Task

    ex = [Example(id="t/0", text="w", answers=["a"])]
    gen = Task(name="gen", kind="generation", template="{prompt} {input}", label_words=[], metric="em",
               manual_prompt="", train=ex, dev=ex, test=ex, reward_metric="f1")
    assert reward_range(gen, 10.0, 0.1) == 1.0  # F1 in [0, 1]: the coefficients do not apply
    cls = Task(name="cls", kind="classification", template="{prompt} {input}", label_words=[" a", " b"],
               metric="accuracy", manual_prompt="", train=ex, dev=ex, test=ex)
    assert reward_range(cls, 10.0, -0.1) == pytest.approx(10.1)
    assert reward_range(cls, 10.0, -0.1, answers=True) == 10.0  # written answers: no margin


def test_opro_logs_each_new_instructions_parents_the_instructions_its_meta_prompt_showed(tmp_path):
    """Lineage on the tiny models: each step's `prompt_parents` is aligned with its `prompts`, and a
    new instruction's parents are exactly the instructions in that step's meta-prompt (read from the
    text the agent was shown), best first; report --html draws the tree from them."""
    import re

    import yaml

    from promptrl.report import load_run
    from promptrl.report_html import lineage, write_html
    from promptrl.scoring.hf import HFScorer

    from conftest import make_model, make_tokenizer

    task = toy_task()
    tok = make_tokenizer()
    agent = make_agent(max_new_tokens=4)
    shown = []  # per optimisation step >= 1: the instructions in its meta-prompt, in order
    query_ids = agent.query_ids

    def spy(user, prefix):
        shown.append(re.findall(r"text:\n(.*?)\nscore:\n\d+\n", user, flags=re.S))
        return query_ids(user, prefix)

    opro = OPRO(cfg(OPROConfig, steps=3, prompts_per_step=3, max_history=4, initial_prompts=["", "classify the sentiment"]),
                task, HFScorer(make_model(len(tok)), tok, task, "tiny"), agent, tmp_path)
    agent.query_ids = spy  # after the start's length check, which queries a stand-in history
    opro.tracker = Tracker(tmp_path, SimpleNamespace(wandb=False))
    opro.run()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and len(shown) == 3
    assert rows[0]["prompt_parents"] == [[], []]  # the initial instructions: from the config
    seen = set(rows[0]["prompts"])
    for row, meta in zip(rows[1:], shown):
        assert len(row["prompt_parents"]) == len(row["prompts"]) == 3
        assert len(meta) == min(4, len(seen)) and set(meta) <= seen  # the best 4 scored so far
        for prompt, parents in zip(row["prompts"], row["prompt_parents"]):
            assert parents == ([] if prompt in seen else meta[::-1])  # best first: the meta-prompt shows it last
        seen |= set(row["prompts"])
    assert any(parents for row in rows[1:] for parents in row["prompt_parents"])

    (tmp_path / "config_resolved.yaml").write_text(yaml.safe_dump({"algo": {"name": "opro"}, "task": {"name": "toy"}, "seed": 0}))
    run = load_run(tmp_path)
    nodes = lineage(run)
    assert set(nodes) == seen and all(set(n["parents"]) <= seen for n in nodes.values())
    page = write_html([run], ["task.name", "algo.name"], tmp_path / "report").read_text()
    assert "<h2>Lineage</h2>" in page and 'id="fig-lineage"' in page and f"lineage of {len(seen)} candidates" in page
