"""Group-relative RL (algo.advantage=grpo|drgrpo|rloo) in the one APPO trainer, on the tiny model:
no value head anywhere, several groups a step scored in one call, one forward and one backward
per step when ppo_epochs=1, the anchor unchanged, and non-finite updates never applied."""

import json
import logging
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from promptrl.agent import ANCHOR, POLICY
from promptrl.algos import ppo_math as pm
from promptrl.algos.appo import APPOTrainer, StepSamples, validate
from promptrl.algos.tte import TTETrainer
from promptrl.checkpoint import load_latest_checkpoint
from promptrl.config import TTEConfig
from promptrl.errors import UserError
from promptrl.tracking import Tracker

from test_agent_trainer import (
    TEXTS,
    StubScorer,
    algo_cfg,
    lora_snapshot,
    make_agent,
    make_trainer,
    start,
    toy_task,
)

GRPO = {"advantage": "grpo", "ppo_epochs": 1, "mini_batch_size": 64}


def rows_of(tmp_path):
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "anchor" not in r]


class CountingAgent:
    """Wraps agent.evaluate_actions to record every call: (adapter, grad enabled, rows)."""

    def __init__(self, agent):
        self.calls = []
        real = agent.evaluate_actions

        def counted(query, responses, adapter=POLICY, with_values=True):
            self.calls.append((adapter, torch.is_grad_enabled(), len(responses), with_values))
            return real(query, responses, adapter, with_values)

        agent.evaluate_actions = counted


@pytest.mark.parametrize("advantage", ["grpo", "drgrpo", "rloo"])
def test_group_estimators_build_train_and_checkpoint_no_value_head(tmp_path, advantage):
    trainer = make_trainer(tmp_path, **{**GRPO, "advantage": advantage, "groups_per_step": 2})
    agent = trainer.agent
    assert agent.value_heads is None
    assert not [n for n, _ in agent.named_parameters() if "value" in n]
    lora = {id(p) for p in agent.lora_params(POLICY).values()}
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == lora  # the adapter, nothing else
    before = lora_snapshot(agent, POLICY)
    torch.manual_seed(0)
    start(trainer, tmp_path).run()
    assert any(not torch.equal(v, before[k]) for k, v in lora_snapshot(agent, POLICY).items())
    # --plan's count is what ran: 4 steps x 2 groups x 3 prompts x 4 inputs + one check (2 x 2 prompts on dev)
    assert trainer.scorer.calls == APPOTrainer.planned_calls(trainer.cfg, trainer.task) == 4 * 6 * 4 + 2 * 2 * len(TEXTS)
    state = load_latest_checkpoint(tmp_path / "checkpoints")
    assert state["extra"]["value_heads"] is None
    assert not [k for k in state["extra"]["lora"] if "value" in k]
    rows = rows_of(tmp_path)
    assert {"approx_kl", "clipfrac", "entropy", "degenerate_groups", "skipped_updates", "kl", "policy_loss"} <= set(rows[0])
    assert "value_loss" not in rows[0] and "explained_variance" not in rows[0]
    # resuming into a fresh trainer loads the adapter and optimizer and no head
    again = make_trainer(tmp_path, **{**GRPO, "advantage": advantage, "groups_per_step": 2})
    again.resume()
    for k, v in lora_snapshot(again.agent, POLICY).items():
        assert torch.equal(v, lora_snapshot(agent, POLICY)[k])


def test_the_trainer_refuses_an_agent_whose_heads_do_not_match_the_estimator():
    task = toy_task()
    with pytest.raises(ValueError, match="without value heads"):
        APPOTrainer(algo_cfg(**GRPO), task, StubScorer(task), make_agent(), None)
    with pytest.raises(ValueError, match="with value heads"):
        APPOTrainer(algo_cfg(), task, StubScorer(task), make_agent(value_heads=False), None)
    agent = make_agent(value_heads=False)
    with pytest.raises(ValueError, match="no value heads"):
        agent.evaluate_actions(torch.tensor([3, 4]), torch.tensor([[5, 6]]), POLICY)


def test_build_agent_gives_value_heads_only_to_gae():
    from promptrl.algos.appo import uses_critic

    assert uses_critic(OmegaConf.create({"advantage": "gae"})) and uses_critic(OmegaConf.create({"name": "ape"}))
    assert not any(uses_critic(OmegaConf.create({"advantage": a})) for a in pm.GROUP_ESTIMATORS)


def test_one_epoch_one_minibatch_is_one_forward_and_one_backward(tmp_path):
    """ppo_epochs=1, one minibatch: per group one policy forward with gradients (its log-probs are
    the "old" ones: ratio exactly 1) and one reference forward; no no-grad policy pass."""
    trainer = make_trainer(tmp_path, **GRPO, groups_per_step=2, prompts_per_step=3)
    counter = CountingAgent(trainer.agent)
    perturb_policy_lora(trainer.agent)  # policy != anchor, so the KL is not zero
    row = trainer.train_step()
    assert sorted(counter.calls) == sorted([(POLICY, True, 3, False)] * 2 + [(ANCHOR, False, 3, False)] * 2)
    assert row["approx_kl"] == 0.0 and row["clipfrac"] == 0.0  # new == old exactly
    assert row["kl"] > 0 and row["skipped_updates"] == 0

    # beta = 0: the reference never runs
    trainer = make_trainer(tmp_path / "nokl", **GRPO, init_kl_coef=0.0)
    counter = CountingAgent(trainer.agent)
    row = trainer.train_step()
    assert counter.calls == [(POLICY, True, 3, False)] and "kl" not in row

    # gae with one epoch: the same single pass (values from it too)
    trainer = make_trainer(tmp_path / "gae", ppo_epochs=1, mini_batch_size=8)
    counter = CountingAgent(trainer.agent)
    row = trainer.train_step()
    assert counter.calls == [(POLICY, True, 3, True), (ANCHOR, False, 3, False)]
    assert row["approx_kl"] == 0.0 and "value_loss" in row

    # several epochs: the old pass and the reference pass without gradients, then one forward per minibatch
    trainer = make_trainer(tmp_path / "ppo", **{**GRPO, "ppo_epochs": 2, "mini_batch_size": 2})
    counter = CountingAgent(trainer.agent)
    trainer.train_step()
    assert counter.calls[:2] == [(POLICY, False, 3, False), (ANCHOR, False, 3, False)]
    assert [c[2] for c in counter.calls[2:]] == [2, 1, 2, 1] and all(c[1] for c in counter.calls[2:])


def perturb_policy_lora(agent):
    with torch.no_grad():
        for p in agent.lora_params(POLICY).values():
            p.add_(torch.randn_like(p) * 0.5)


def test_several_groups_a_step_are_scored_in_one_call_from_their_own_demonstrations(tmp_path):
    task = toy_task()
    scorer = StubScorer(task, n_good=2)
    calls = []
    real_score = scorer.score
    scorer.score = lambda prompts, examples: calls.append((len(prompts), len(examples))) or real_score(prompts, examples)
    agent = make_agent(value_heads=False)
    queries = []
    real_sample = agent.sample_groups
    agent.sample_groups = lambda qs, n, adapter=POLICY: queries.extend(qs) or real_sample(qs, n, adapter)
    cfg = algo_cfg(**GRPO, groups_per_step=3, group_size=3, epochs=1)
    trainer = APPOTrainer(cfg, task, scorer, agent, None)
    row = trainer.train_step()
    assert calls == [(9, 4)]  # 3 groups x 3 prompts, one target call on the batch of 4
    assert len(row["prompts"]) == 9 and len(queries) == 3
    assert len({tuple(q.tolist()) for q in queries}) == 3  # a fresh draw of demonstrations for each group
    # StubScorer: the first two prompts of the call are right, the rest wrong: group 0 has a spread,
    # groups 1 and 2 score all the same (degenerate)
    assert row["degenerate_groups"] == 2
    assert APPOTrainer.planned_calls(cfg, task) == 9 * len(TEXTS)  # one epoch: 9 prompts a step on every train example


def test_the_step_forward_over_groups_of_different_widths_equals_each_group_alone():
    trainer = make_trainer(None, **GRPO)
    agent = trainer.agent
    perturb_policy_lora(agent)
    q1, q2 = agent.query_ids("here are five pairs", "the instruction was"), agent.query_ids("classify", "the answer")
    g1 = SimpleNamespace(query=q1, responses=torch.tensor([[10, 11, 2], [12, 2, 1]]), mask=torch.tensor([[1.0, 1, 1], [1, 1, 0]]),
                         logprobs=None)
    g2 = SimpleNamespace(query=q2, responses=torch.tensor([[13, 2], [14, 15]]), mask=torch.ones(2, 2), logprobs=None)
    batch = StepSamples.of([g1, g2], agent.pad_id)
    assert batch.responses.shape == (4, 3) and batch.mask[2:, 2].tolist() == [0.0, 0.0]
    with torch.no_grad():
        both = trainer.forward(batch, torch.tensor([3, 0, 2, 1]), POLICY, with_values=False)
        lp1, _ = agent.evaluate_actions(q1, g1.responses, POLICY, with_values=False)
        lp2, _ = agent.evaluate_actions(q2, g2.responses, POLICY, with_values=False)
    torch.testing.assert_close(both.logp[[1, 3]], lp1, rtol=0, atol=1e-6)
    torch.testing.assert_close(both.logp[[2, 0]][:, :2], lp2, rtol=0, atol=1e-6)
    assert (both.logp[[2, 0]][:, 2] == 0).all()  # padding beyond the group's width


def test_groups_decoded_together_continue_each_query_as_it_would_be_alone():
    # A step's groups are left-padded into one generate call; a padded query must be read with
    # its real positions and no attention to the padding, or its samples come from another policy.
    agent = make_agent(max_new_tokens=8, value_heads=False)
    perturb_policy_lora(agent)
    long = agent.query_ids("here are five pairs . the friend wrote great movie and bad acting", "the instruction was")
    short = agent.query_ids("classify", "the answer")
    assert len(long) > len(short) + 5
    together = agent.generate_padded([long, short], 2, POLICY, greedy=True)
    alone = [agent.generate_padded([q], 1, POLICY, greedy=True)[0] for q in (long, short)]
    for i, response in enumerate(alone):
        for row in together[2 * i:2 * i + 2]:
            width = len(response)
            assert row[:width].tolist() == response.tolist()
    # and sampled groups come back one per query, each with its own query
    torch.manual_seed(0)
    groups = agent.sample_groups([long, short], 3, POLICY)
    assert [len(g.prompts) for g in groups] == [3, 3]
    assert torch.equal(groups[0].query, long) and torch.equal(groups[1].query, short)


@pytest.mark.parametrize("advantage", ["gae", "grpo", "rloo"])
def test_a_step_whose_groups_all_score_alike_leaves_the_adapter_unchanged(tmp_path, advantage):
    """All rewards equal (StubScorer: every prompt wrong): no NaN, no step made of noise."""
    task = toy_task()
    agent = make_agent(value_heads=advantage == "gae")
    over = {} if advantage == "gae" else {**GRPO, "advantage": advantage}
    trainer = APPOTrainer(algo_cfg(**over, groups_per_step=2, init_kl_coef=0.0), task, StubScorer(task), agent, tmp_path,
                          tracker=Tracker(tmp_path, SimpleNamespace(wandb=False)))
    before = lora_snapshot(agent, POLICY)
    row = trainer.train_step()
    assert row["degenerate_groups"] == 2 and row["skipped_updates"] == 0
    assert all(torch.isfinite(torch.tensor(float(row[k]))) for k in ("policy_loss", "entropy", "approx_kl"))
    if advantage != "gae":  # zero advantage, no KL: a zero gradient, and Adam's step is exactly 0
        assert row["policy_loss"] == 0.0
        assert all(torch.equal(v, before[k]) for k, v in lora_snapshot(agent, POLICY).items())


@pytest.mark.parametrize("over", [{}, GRPO, {**GRPO, "advantage": "drgrpo"}], ids=["gae", "grpo", "drgrpo"])
@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_a_non_finite_update_is_skipped_and_logged(tmp_path, monkeypatch, caplog, over, where):
    trainer = make_trainer(tmp_path, **over)
    agent = trainer.agent
    if where == "loss":
        real = pm.policy_loss
        monkeypatch.setattr(pm, "policy_loss", lambda *a, **k: (lambda l, s: (l * float("nan"), s))(*real(*a, **k)))
    else:  # a finite loss whose gradient overflows in one tensor
        name, param = next(iter(agent.lora_params(POLICY).items()))
        param.register_hook(lambda g: torch.full_like(g, float("inf")))
    before, heads = lora_snapshot(agent, POLICY), [p.detach().clone() for p in agent.trainable_parameters()]
    start(trainer, tmp_path)
    with caplog.at_level(logging.WARNING, logger="promptrl.algos.appo"):
        row = trainer.train_step()
    minibatches = trainer.cfg.ppo_epochs * -(-3 // trainer.cfg.mini_batch_size)
    assert row["skipped_updates"] == minibatches
    assert all(torch.equal(v, before[k]) for k, v in lora_snapshot(agent, POLICY).items())
    assert all(torch.equal(p, h) for p, h in zip(agent.trainable_parameters(), heads))
    assert not trainer.optimizer.state  # Adam's moments untouched too
    assert "optimizer step skipped" in caplog.text
    trainer.log({"step": 0, **row})
    assert rows_of(tmp_path)[0]["skipped_updates"] == minibatches


def spy_on_group_advantages(monkeypatch) -> dict:
    seen = {}
    real = pm.group_advantages

    def spy(rewards, groups, estimator, scores=None, eps=1e-6):
        seen["rewards"], seen["scores"] = rewards.clone(), scores.clone()
        return real(rewards, groups, estimator, scores, eps)

    monkeypatch.setattr(pm, "group_advantages", spy)
    return seen


def test_kl_as_a_loss_term_is_k3_and_zero_while_policy_equals_anchor(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, **GRPO, kl_in="loss", init_kl_coef=0.5, adaptive_kl=False)
    row = trainer.train_step()  # the policy starts as a copy of the anchor
    assert row["kl_loss"] == 0.0 and row["kl"] == 0.0
    perturb_policy_lora(trainer.agent)
    seen = spy_on_group_advantages(monkeypatch)
    row = trainer.train_step()
    assert row["kl_loss"] > 0 and row["kl"] != 0 and row["kl_coef"] == 0.5
    assert torch.equal(seen["rewards"], seen["scores"])  # kl_in=loss keeps the KL out of the rewards


def test_kl_in_reward_adds_the_summed_penalty_to_each_sequence_reward(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, **GRPO, kl_in="reward", init_kl_coef=0.5, adaptive_kl=False)
    perturb_policy_lora(trainer.agent)
    seen = spy_on_group_advantages(monkeypatch)
    row = trainer.train_step()
    penalty = seen["scores"] - seen["rewards"]
    assert (penalty != 0).all() and "kl_loss" not in row
    assert penalty.mean().item() == pytest.approx(0.5 * row["kl"], rel=1e-4)  # beta x the mean sequence KL


@pytest.mark.parametrize("reference", ["anchor", "base", "previous"])
def test_every_reference_works_with_a_group_estimator(tmp_path, reference):
    trainer = make_trainer(tmp_path, **GRPO, reference=reference)
    torch.manual_seed(0)
    start(trainer, tmp_path).run()
    assert trainer.step == 4
    decisions = [a["anchor"] for a in trainer.anchor_history]  # two epochs, update_term 1: one check
    if reference == "anchor":
        assert len(decisions) == 1 and decisions[0] in ("update", "rollback", "keep")
        # the logged check says how long it took (report's training minutes); results keep no times
        logged = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "anchor" in r]
        assert len(logged) == 1 and logged[0]["time_check"] > 0 and "time_check" not in trainer.anchor_history[0]
        # the rollback path restores the policy from the anchor and clears Adam, with no head to copy
        trainer.scorer = StubScorer(trainer.task, n_good=trainer.cfg.anchor_eval_prompts, last=True)
        perturb_policy_lora(trainer.agent)
        assert trainer.anchor_check()["anchor"] == "rollback"
        for k, v in lora_snapshot(trainer.agent, POLICY).items():
            assert torch.equal(v, lora_snapshot(trainer.agent, ANCHOR)[k])
        assert not trainer.optimizer.state
    else:
        assert decisions == {"base": [], "previous": ["update"]}[reference]


def test_tte_with_a_group_estimator_groups_the_instructions_for_one_input(tmp_path):
    from test_tte import PairScorer

    task = toy_task()
    cfg = OmegaConf.merge(OmegaConf.structured(TTEConfig), {
        "epochs": 1, "num_demos": 2, "update_term": 1, "learning_rate": 1e-2, "batch_size": 2, "prompts_per_step": 3,
        **GRPO})
    tte = TTETrainer(cfg, task, PairScorer(task), make_agent(max_new_tokens=4, value_heads=False), tmp_path)
    before = lora_snapshot(tte.agent, POLICY)
    row = tte.train_step()
    assert len(row["prompts"]) == 6 and tte.scorer.calls == 6  # 2 inputs x 3 instructions, each on its input
    assert "degenerate_groups" in row and "value_loss" not in row
    assert TTETrainer.planned_calls(cfg, task) == 3 * len(task.train) + 2 * len(task.dev)
    if row["degenerate_groups"] < 1:  # (the mean over the batch's two per-input updates)
        assert any(not torch.equal(v, before[k]) for k, v in lora_snapshot(tte.agent, POLICY).items())
    with pytest.raises(UserError, match=r"algo.groups_per_step=2 is not for tte"):
        TTETrainer.check_config(OmegaConf.merge(cfg, {"groups_per_step": 2}))


@pytest.mark.parametrize("over, message", [
    ({"advantage": "ppo"}, r"^algo.advantage='ppo'; expected one of: gae, grpo, drgrpo, rloo$"),
    ({"kl_in": "both"}, r"^algo.kl_in='both'; expected one of: reward, loss$"),
    ({"group_size": 1, "prompts_per_step": 1}, r"^algo.group_size=1; expected >= 2"),
    ({"group_size": 8}, r"^algo.group_size=8 with algo.prompts_per_step=3; expected the same number"),
    ({"groups_per_step": 0}, r"^algo.groups_per_step=0; expected an integer >= 1"),
    ({"kl_target": 0.0}, r"^algo.kl_target=0.0; expected > 0"),
    ({"kl_horizon": -5.0}, r"^algo.kl_horizon=-5.0; expected > 0"),
    ({"cliprange": 0.0}, r"^algo.cliprange=0.0; expected > 0"),
    ({"gamma": 1.5}, r"^algo.gamma=1.5; expected a discount in \[0, 1\]"),
    ({"lam": -0.1}, r"^algo.lam=-0.1; expected GAE's lambda in \[0, 1\]"),
    ({"init_kl_coef": -0.2}, r"^algo.init_kl_coef=-0.2; expected >= 0"),
])
def test_bad_group_and_kl_values_are_one_line_errors(over, message):
    with pytest.raises(UserError, match=message) as err:
        validate(algo_cfg(**over))
    assert "\n" not in str(err.value)


def test_group_size_and_prompts_per_step_are_one_number():
    cfg = algo_cfg(group_size=None, prompts_per_step=5, groups_per_step=2)
    from promptrl.algos.appo import group_size, samples_per_step

    assert group_size(cfg) == 5 and samples_per_step(cfg) == 10
    cfg = algo_cfg(group_size=5, prompts_per_step=5)
    validate(cfg)
    # a config saved before these keys existed (a resumed run) reads as APPO's defaults
    old = OmegaConf.create({k: v for k, v in OmegaConf.to_container(algo_cfg()).items()
                            if k not in ("advantage", "kl_in", "group_size", "groups_per_step")})
    validate(old)
    assert group_size(old) == 3 and samples_per_step(old) == 3
