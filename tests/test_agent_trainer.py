"""Agent adapters, the anchor logic and the training loop on a tiny random model."""

import json
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from promptrl.agent import ANCHOR, BASE, POLICY, Agent, response_mask
from promptrl.algos.appo import APPOTrainer, validate
from promptrl.config import APPOConfig
from promptrl.errors import UserError
from promptrl.prompts import build_query_text, user_message
from promptrl.scoring import ClassificationScores, Scorer
from promptrl.scoring.hf import HFScorer
from promptrl.tasks import Example, Task
from promptrl.tracking import Tracker

from conftest import make_model, make_tokenizer

TEXTS = ["great movie", "terrible film", "i love it", "boring plot", "fun story", "bad acting", "good", "not good"]


def toy_task():
    ex = [Example(id=f"x/{i}", text=t, label=int(t in ("great movie", "i love it", "fun story", "good"))) for i, t in enumerate(TEXTS)]
    return Task(name="toy", kind="classification", template="{prompt} input : {input} sentiment :",
                label_words=[" bad", " good"], metric="accuracy", manual_prompt="classify the sentiment",
                train=ex, dev=ex, test=ex)


def make_agent(seed=0, max_new_tokens=6, value_heads=True):
    tok = make_tokenizer()
    torch.manual_seed(seed)
    return Agent(make_model(len(tok), seed=seed), tok, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                 max_new_tokens=max_new_tokens, value_heads=value_heads)


def algo_cfg(**over):
    return OmegaConf.merge(OmegaConf.structured(APPOConfig), {
        "epochs": 2, "batch_size": 4, "prompts_per_step": 3, "num_demos": 2, "update_term": 1,
        "learning_rate": 1e-2, "ppo_epochs": 2, "mini_batch_size": 2, "anchor_eval_prompts": 2, **over})


class StubScorer(Scorer):
    """Accuracy 1 for the first (or `last`) `n_good` prompts of each call, 0 for the rest (or NaN)."""

    def __init__(self, task, n_good=0, nan=False, last=False):
        super().__init__(task, "stub")
        self.n_good, self.nan, self.last = n_good, nan, last

    def score(self, prompts, examples):
        labels = torch.tensor([e.label for e in examples])
        lp = torch.full((len(prompts), len(examples), 2), -5.0)
        for p in range(len(prompts)):
            good = (p >= len(prompts) - self.n_good) if self.last else (p < self.n_good)
            lp[p, torch.arange(len(examples)), labels if good else 1 - labels] = -0.1
        if self.nan:
            lp[:] = float("nan")
        self.calls += len(prompts) * len(examples)
        return ClassificationScores(label_logprobs=lp, labels=labels)


def lora_snapshot(agent, adapter):
    return {k: v.detach().clone() for k, v in agent.lora_params(adapter).items()}


def perturb_policy(agent):
    with torch.no_grad():
        for p in agent.lora_params(POLICY).values():
            p.add_(torch.randn_like(p) * 0.5)
        agent.value_heads[POLICY].weight.add_(1.0)


def test_response_mask_keeps_tokens_up_to_first_eos():
    r = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert response_mask(r, [2]).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_shared_query_forward_equals_full_sequences():
    agent = make_agent()
    perturb_policy(agent)
    query = agent.query_ids("here are five pairs\n\ninput : great", "the instruction was")
    responses = torch.tensor([[10, 11, 12, 2], [13, 2, 1, 1]])
    logp, values = agent.evaluate_actions(query, responses, POLICY)
    ids = torch.cat([query.unsqueeze(0).expand(2, -1), responses], 1)
    with torch.no_grad():
        out = agent.model(input_ids=ids, output_hidden_states=True)
    q = len(query)
    want = torch.log_softmax(out.logits[:, q - 1:-1].float(), -1).gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(logp, want, atol=1e-5, rtol=0)
    want_v = agent.value_heads[POLICY](out.hidden_states[-1][:, q - 1:-1]).squeeze(-1)
    torch.testing.assert_close(values, want_v, atol=1e-5, rtol=0)


def test_sampling_with_a_shared_query_cache_equals_plain_generate():
    agent = make_agent(max_new_tokens=8)
    perturb_policy(agent)  # so the adapter matters
    query = agent.query_ids("here are five pairs . the friend wrote", "the instruction was")
    torch.manual_seed(3)
    got = agent.sample(query, 4)
    torch.manual_seed(3)
    inputs = query.unsqueeze(0).expand(4, -1)
    with torch.no_grad():
        plain = agent.model.generate(input_ids=inputs, attention_mask=torch.ones_like(inputs), do_sample=True,
                                     temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8,
                                     pad_token_id=agent.pad_id, eos_token_id=agent.eos_ids)[:, len(query):]
    plain = torch.where(got.mask.bool(), plain, torch.full_like(plain, agent.pad_id))
    assert torch.equal(got.responses, plain)


def test_query_has_an_open_assistant_turn_and_plain_fallback():
    tok = make_tokenizer()
    text = build_query_text(tok, "meta\n\ninput : great", "the instruction was", "error")
    assert text.endswith("<assistant> the instruction was")
    tok.chat_template = None
    with pytest.raises(UserError, match="no chat template.*agent.no_chat_template=plain"):
        build_query_text(tok, "meta", "prefix", "error")
    assert build_query_text(tok, user_message("meta", "demos\n"), "prefix", "plain") == "meta\n\ndemos\n\nprefix"


def run_anchor_check(n_good, **cfg_over):
    task = toy_task()
    agent = make_agent()
    trainer = APPOTrainer(algo_cfg(**cfg_over), task, StubScorer(task, n_good=n_good), agent, out_dir=None)
    perturb_policy(agent)
    # one optimizer step so Adam has state to reset
    trainer.optimizer.zero_grad()
    sum(p.sum() for p in agent.trainable_parameters()).backward()
    trainer.optimizer.step()
    before = {POLICY: lora_snapshot(agent, POLICY), ANCHOR: lora_snapshot(agent, ANCHOR),
              "vh_policy": agent.value_heads[POLICY].weight.detach().clone(),
              "vh_anchor": agent.value_heads[ANCHOR].weight.detach().clone()}
    decision = trainer.anchor_check()
    return trainer, agent, before, decision


def test_anchor_update_copies_policy_into_anchor_and_kl_is_zero():
    trainer, agent, before, decision = run_anchor_check(n_good=2)  # policy prompts right, anchor's wrong
    assert decision["anchor"] == "update" and decision["policy_dev_acc"] == 1.0 and decision["anchor_dev_acc"] == 0.0
    # the two adapters differed before the check, so the copy below is visible
    assert any(not torch.equal(before[POLICY][k], before[ANCHOR][k]) for k in before[POLICY])
    for k, v in lora_snapshot(agent, ANCHOR).items():
        torch.testing.assert_close(v, before[POLICY][k], rtol=0, atol=0)
    for k, v in lora_snapshot(agent, POLICY).items():
        assert torch.equal(v, before[POLICY][k])
    assert torch.equal(agent.value_heads[ANCHOR].weight, before["vh_policy"])
    assert len(trainer.optimizer.state) > 0  # an update keeps the optimizer state
    query = agent.query_ids("meta\n\ninput : good", "the instruction was")
    responses = torch.tensor([[10, 11, 12], [13, 14, 2]])
    with torch.no_grad():
        lp_policy, _ = agent.evaluate_actions(query, responses, POLICY)
        lp_anchor, _ = agent.evaluate_actions(query, responses, ANCHOR)
        lp_base, _ = agent.evaluate_actions(query, responses, BASE)
    torch.testing.assert_close(lp_policy, lp_anchor, rtol=0, atol=0)
    assert not torch.allclose(lp_policy, lp_base)  # the anchor is not the base model


def test_rollback_restores_policy_from_anchor_and_resets_optimizer():
    trainer, agent, before, decision = run_anchor_check(n_good=0, rollback_threshold=0.1)
    assert decision["anchor"] == "keep"  # equal accuracies: nothing happens
    assert torch.equal(next(iter(lora_snapshot(agent, POLICY).values())), next(iter(before[POLICY].values())))

    trainer.scorer = StubScorer(trainer.task, n_good=2, last=True)  # the anchor's prompts are right
    decision = trainer.anchor_check()
    assert decision["anchor"] == "rollback" and decision["diff"] == -1.0
    for k, v in lora_snapshot(agent, POLICY).items():
        torch.testing.assert_close(v, before[ANCHOR][k], rtol=0, atol=0)
    for k, v in lora_snapshot(agent, ANCHOR).items():
        assert torch.equal(v, before[ANCHOR][k])
    assert torch.equal(agent.value_heads[POLICY].weight, before["vh_anchor"])
    assert len(trainer.optimizer.state) == 0


def test_previous_reference_always_updates_and_base_never_checks():
    trainer, agent, before, decision = run_anchor_check(n_good=0, reference="previous")
    assert decision == {"anchor": "update"}
    for k, v in lora_snapshot(agent, ANCHOR).items():
        assert torch.equal(v, before[POLICY][k])
    trainer, agent, before, decision = run_anchor_check(n_good=2, reference="base")
    assert decision == {}
    assert trainer.reference_adapter() == BASE


@pytest.mark.parametrize("over, message", [
    ({"update_term": 0}, r"algo.update_term=0; expected an integer >= 1"),
    ({"update_threshold": -0.1}, r"algo.update_threshold=-0.1; expected >= 0"),
    ({"rollback_threshold": -1.0}, r"algo.rollback_threshold=-1.0"),
    ({"prompts_per_step": 1}, r"algo.prompts_per_step=1; expected >= 2"),
    ({"reference": "ema"}, r"algo.reference='ema'; expected one of: anchor, base, previous"),
])
def test_bad_algo_values(over, message):
    with pytest.raises(UserError, match=message):
        validate(algo_cfg(**over))


def test_nan_reward_skips_the_step_without_crashing(tmp_path):
    task = toy_task()
    agent = make_agent()
    trainer = APPOTrainer(algo_cfg(epochs=1), task, StubScorer(task, nan=True), agent, tmp_path,
                          tracker=Tracker(tmp_path, SimpleNamespace(wandb=False)))
    before = lora_snapshot(agent, POLICY)
    trainer.run()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "anchor" not in r]
    assert len(steps) == 2 and all(r["skipped"] == "non-finite reward" for r in steps)
    assert all(torch.equal(v, before[k]) for k, v in lora_snapshot(agent, POLICY).items())
    assert trainer.queue.items == []


def make_trainer(tmp_path, seed=0, **over):
    task = toy_task()
    tok = make_tokenizer()
    target = HFScorer(make_model(len(tok), seed=123), tok, task, "tiny-target")
    agent = make_agent(seed, value_heads=over.get("advantage", "gae") == "gae")
    trainer = APPOTrainer(algo_cfg(**over), task, target, agent, tmp_path, seed=seed, checkpoint_every=1)
    return trainer


def start(trainer, tmp_path, resume_step=None):
    trainer.tracker = Tracker(tmp_path, SimpleNamespace(wandb=False), resume_step=resume_step)
    return trainer


def test_training_updates_the_policy_and_logs_every_step(tmp_path):
    trainer = make_trainer(tmp_path)
    torch.manual_seed(0)
    before = lora_snapshot(trainer.agent, POLICY)
    start(trainer, tmp_path).run()
    rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "anchor" not in r]
    assert [r["step"] for r in steps] == [0, 1, 2, 3]
    assert {"approx_kl", "clipfrac", "explained_variance", "kl", "reward_mean", "target_calls"} <= set(steps[0])
    assert len([r for r in rows if "anchor" in r]) == 1  # update_term=1, two epochs: none after the last
    assert any(not torch.equal(v, before[k]) for k, v in lora_snapshot(trainer.agent, POLICY).items())
    assert 1 <= len(trainer.queue.items) <= 5
    assert trainer.scorer.calls == 4 * 3 * 4 + 1 * 2 * 2 * len(TEXTS)  # steps x prompts x batch + one anchor check (2 x 2 prompts on dev)


@pytest.mark.parametrize("over", [{}, {"advantage": "grpo", "groups_per_step": 2, "ppo_epochs": 1, "mini_batch_size": 6}],
                         ids=["gae", "grpo"])
def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path, over):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    torch.manual_seed(0)
    full = start(make_trainer(full_dir, **over), full_dir)
    full.run()

    torch.manual_seed(0)
    cut = start(make_trainer(cut_dir, **over), cut_dir)
    real_step = cut.ppo_step
    calls = {"n": 0}

    def dying_step(batch):  # "kill" during the fourth step, after three checkpoints
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_step(batch)

    cut.ppo_step = dying_step
    with pytest.raises(KeyboardInterrupt):
        cut.run()
    assert sorted(p.name for p in (cut_dir / "checkpoints").glob("*.pt")) == ["ckpt-0000002.pt", "ckpt-0000003.pt"]

    torch.manual_seed(999)  # whatever the process state, resume restores it
    resumed = make_trainer(cut_dir, **over)
    resumed.resume()
    assert resumed.step == 3
    start(resumed, cut_dir, resume_step=resumed.step - 1).run()

    assert resumed.queue.items == full.queue.items
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]
    read = lambda d: strip([json.loads(l) for l in (d / "metrics.jsonl").read_text().splitlines()])
    assert read(cut_dir) == read(full_dir)
    for k, v in lora_snapshot(resumed.agent, POLICY).items():
        torch.testing.assert_close(v, lora_snapshot(full.agent, POLICY)[k], rtol=0, atol=0)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
    trainer = make_trainer(tmp_path)
    start(trainer, tmp_path).run()
    newest = sorted((tmp_path / "checkpoints").glob("*.pt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a torn write
    again = make_trainer(tmp_path)
    again.resume()
    assert again.step == 3


def test_acting_folds_the_adapter_in_and_puts_the_weights_back_exactly():
    agent = make_agent()
    with torch.no_grad():  # a non-trivial policy (B starts at zero)
        for name, p in agent.model.named_parameters():
            if "lora_B" in name and ".policy." in name:
                p.normal_(0, 0.5)
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    ids = torch.tensor([[5, 9, 14, 3, 7, 11]])
    agent.model.eval()
    with torch.no_grad():
        with agent.using(POLICY):
            want = agent.model(input_ids=ids).logits
        with agent.using(BASE):
            base = agent.model(input_ids=ids).logits
        with agent.acting(POLICY):
            got = agent.model(input_ids=ids).logits
            folded = [n for n, p in agent.model.named_parameters() if "base_layer" in n and not torch.equal(p, before[n])]
    assert not torch.allclose(want, base, atol=1e-3)  # the adapter matters...
    assert torch.allclose(got, want, atol=1e-5)  # ...and acting applies it,
    assert folded  # folded into the base weights (the LoRA branches off)
    for n, p in agent.model.named_parameters():
        assert torch.equal(p, before[n]), n  # restored bit for bit
    assert all(not p.requires_grad for p in agent.lora_params(ANCHOR).values())


def test_mixed_precision_agent_keeps_trainables_in_fp32_and_samples_with_its_adapter():
    tok = make_tokenizer()
    agent = Agent(make_model(len(tok)).to(torch.bfloat16), tok, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_new_tokens=6)
    base_weights = [p for n, p in agent.model.named_parameters() if "lora_" not in n]
    assert {p.dtype for p in base_weights} == {torch.bfloat16}
    for adapter in (POLICY, ANCHOR):  # adapters and value heads in fp32, so Adam's state is too
        assert {p.dtype for p in agent.lora_params(adapter).values()} == {torch.float32}
        assert agent.value_heads[adapter].weight.dtype == torch.float32
    with torch.no_grad():
        for name, p in agent.lora_params(POLICY).items():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.tensor([[5, 9, 14, 3, 7, 11]])
    agent.model.eval()
    with torch.no_grad():
        with agent.using(POLICY):
            want = agent.model(input_ids=ids).logits
        with agent.using(BASE):
            base = agent.model(input_ids=ids).logits
        with agent.acting(POLICY):  # bf16 W + BA would round a small BA away: no folding here
            got = agent.model(input_ids=ids).logits
    assert not torch.allclose(want.float(), base.float(), atol=1e-2)
    assert torch.equal(got, want), "sampling in bf16 must use the adapter, not the base model"


def test_queue_rescore_admits_prompts_with_their_reward_on_all_of_train(tmp_path):
    from promptrl.scoring import reward

    trainer = make_trainer(tmp_path, queue_rescore=True, reference="base", queue_size=20)
    torch.manual_seed(0)
    start(trainer, tmp_path).run()
    task, cfg = trainer.task, trainer.cfg
    assert trainer.scorer.calls == APPOTrainer.planned_calls(cfg, task) == 4 * 3 * (4 + len(TEXTS))
    queued = trainer.queue.items
    full = reward(trainer.scorer.score([q["prompt"] for q in queued], task.train), cfg.reward_acc_coef, cfg.reward_margin_coef)
    assert [q["reward"] for q in queued] == pytest.approx(full.tolist(), abs=1e-5)
    # without it the queue holds batch rewards, which differ from the full-train ones here
    plain = make_trainer(tmp_path / "plain", reference="base", queue_size=20)
    torch.manual_seed(0)
    start(plain, tmp_path / "plain").run()
    assert plain.scorer.calls == APPOTrainer.planned_calls(plain.cfg, task) == 4 * 3 * 4
    rescored = reward(plain.scorer.score(plain.queue.prompts, task.train), cfg.reward_acc_coef, cfg.reward_margin_coef)
    assert [q["reward"] for q in plain.queue.items] != pytest.approx(rescored.tolist(), abs=1e-5)
