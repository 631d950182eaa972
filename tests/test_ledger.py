"""The run's cost ledger (promptrl/ledger.py) on the tiny models: every metrics row carries the
cumulative spend, the counts are the work that was done (not estimates), phases never count a
second twice, and a resumed run's ledger continues from its checkpoint (the kill-and-resume test
of test_agent_trainer compares every non-time key of every row, these included)."""

import json

import pytest
import torch
from test_group_rl import GRPO, CountingAgent

from promptrl.errors import UserError
from promptrl.ledger import Ledger
from promptrl.train import check_money_budget

from test_agent_trainer import make_trainer, start

COUNTS = ("target_calls", "target_input_tokens", "target_output_tokens", "agent_input_tokens", "agent_output_tokens",
          "agent_train_forward_tokens", "agent_train_backward_tokens")


def rows_of(out):
    return [r for r in (json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()) if "anchor" not in r]


@pytest.mark.parametrize("over", [{}, {**GRPO, "groups_per_step": 2}], ids=["appo", "grpo"])
def test_each_row_holds_the_cumulative_spend_of_the_work_done(tmp_path, over):
    trainer = start(make_trainer(tmp_path, **over), tmp_path)
    agent = trainer.agent
    passes = []
    real = agent.evaluate_actions

    def counted(query, responses, adapter="policy", with_values=True):
        passes.append((len(query) + responses.shape[0] * (responses.shape[1] - 1), torch.is_grad_enabled()))
        return real(query, responses, adapter, with_values)

    agent.evaluate_actions = counted
    sampled = []  # (query, samples) of every sampling: the steps' groups and the anchor checks'
    real_groups, real_sample = agent.sample_groups, agent.sample

    def groups(qs, n, adapter="policy"):
        out = real_groups(qs, n, adapter)
        sampled.extend(zip(qs, out))
        return out

    def one(q, n, adapter="policy"):
        out = real_sample(q, n, adapter)
        sampled.append((q, out))
        return out

    agent.sample_groups, agent.sample = groups, one
    trainer.run()
    rows = rows_of(tmp_path)
    assert len(rows) == trainer.step >= 2
    last = rows[-1]
    # tokens the agent wrote and read: every sample's response (the steps' prompts, whose lengths
    # the rows log, and the anchor checks'), each query once
    assert last["agent_output_tokens"] == sum(s.mask.sum().item() for _, s in sampled) > sum(sum(r["prompt_lens"]) for r in rows)
    assert last["agent_input_tokens"] == sum(len(q) for q, _ in sampled)
    assert last["agent_train_forward_tokens"] == sum(n for n, _ in passes)
    assert last["agent_train_backward_tokens"] == sum(n for n, grad in passes if grad) > 0
    if over:  # one forward with a graph and no reference pass while the KL is to the anchor, which starts equal
        assert last["agent_train_backward_tokens"] <= last["agent_train_forward_tokens"]
    assert (last["target_calls"], last["target_input_tokens"]) == (trainer.scorer.calls, trainer.scorer.tokens) != (0, 0)
    assert last["target_output_tokens"] == 0  # label log-probs: the target writes nothing
    assert last["usd"] is None and last["target_usd"] is None  # local models: no money figure
    for key in COUNTS:  # cumulative: never falls from row to row
        assert all(a[key] <= b[key] for a, b in zip(rows, rows[1:])), key
    assert last["time_spent_generate"] > 0 and last["time_spent_score"] > 0 and last["time_spent_update"] > 0
    # phases are disjoint parts of training's time (steps and anchor checks)
    assert sum(last[f"time_spent_{p}"] for p in ("generate", "score", "update")) <= trainer.elapsed


def test_a_phase_inside_another_is_counted_once():
    ledger = Ledger()
    with ledger.timed("evaluation"):
        with ledger.timed("score"):
            sum(range(10**5))
    assert ledger.seconds["score"] == 0 and ledger.seconds["evaluation"] > 0


def test_the_ledger_survives_a_checkpoint(tmp_path):
    from promptrl.scoring.cache import ScoreCache

    trainer = start(make_trainer(tmp_path), tmp_path)
    trainer.scorer.cache = ScoreCache(tmp_path / "cache", "ns")
    trainer.run()
    before = trainer.cost()
    again = make_trainer(tmp_path)
    assert again.cost()["agent_output_tokens"] == 0
    again.resume()
    after = again.cost()
    assert {k: after[k] for k in COUNTS} == {k: before[k] for k in COUNTS}
    assert after["time_spent_update"] == pytest.approx(before["time_spent_update"], abs=1e-3)
    # the score cache's counts are the run's too, not the resumed session's
    assert (again.scorer.cache_hits, again.scorer.cache_misses) == (trainer.scorer.cache_hits, trainer.scorer.cache_misses)
    assert trainer.scorer.cache_hits + trainer.scorer.cache_misses > 0


def test_the_trainer_shares_one_ledger_with_scorer_and_agent(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer.ledger is trainer.scorer.ledger is trainer.agent.ledger
    CountingAgent(trainer.agent)  # unrelated wrapper: the ledger is an attribute, not a method


@pytest.mark.parametrize("over, message", [
    ({"budget": {"usd": 1.0}}, "budget.usd=1.0 needs a price for every model the run pays for"),
    ({"budget": {"usd": 1.0}, "target": {"backend": "chat", "chat": {"price_input": 0.1, "price_output": None}}},
     "budget.usd=1.0 needs a price for every model the run pays for"),
])
def test_a_money_budget_without_prices_is_one_line(over, message):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"budget": {"usd": None}, "target": {"backend": "hf", "chat": {"price_input": None, "price_output": None}},
                            "agent": {"backend": "hf"}})
    cfg = OmegaConf.merge(cfg, over)
    with pytest.raises(UserError, match=message):
        check_money_budget(cfg)


def test_a_money_budget_with_every_price_set_passes():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"budget": {"usd": 1.0}, "target": {"backend": "chat", "chat": {"price_input": 0.15, "price_output": 0.6}},
                            "agent": {"backend": "hf"}})
    check_money_budget(cfg)
