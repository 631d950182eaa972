"""TTE-StablePrompt on a tiny random agent: per-input queries, per-instance rewards, the
per-input anchor check and the final one-prompt-per-input evaluation."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from promptrl.agent import ANCHOR
from promptrl.algos.tte import TTETrainer
from promptrl.config import TTEConfig
from promptrl.scoring import Scorer

from test_agent_trainer import lora_snapshot, make_agent, perturb_policy, toy_task


class PairScorer(Scorer):
    """Label log-probs from the prompt text: prompts containing "good" answer " good"."""

    def __init__(self, task):
        super().__init__(task, "pairs")
        self.texts = []

    def _label_logprobs(self, texts, group_size=None):
        self.texts += texts
        return torch.tensor([[-0.1, -3.0] if "good" not in t.split(" input :")[0] else [-3.0, -0.1] for t in texts])


def make_tte(tmp_path, **over):
    task = toy_task()
    cfg = OmegaConf.merge(OmegaConf.structured(TTEConfig), {
        "epochs": 1, "num_demos": 2, "update_term": 1, "learning_rate": 1e-2, "ppo_epochs": 1, "mini_batch_size": 2,
        **over})
    return TTETrainer(cfg, task, PairScorer(task), make_agent(max_new_tokens=4), tmp_path)


def test_message_holds_demos_and_the_current_input_but_never_its_answer(tmp_path):
    tte = make_tte(tmp_path, num_demos=7)
    ex = tte.task.dev[0]
    text = tte.tte_message(ex)
    assert text.startswith("Look at the instruction and current input")
    assert text.count("Input: ") == 7  # seven demonstrations: every other dev example
    assert f"Input: {ex.text}\n" not in text  # the current example is never a demonstration
    assert text.endswith(f"Current Input Here : {ex.text}")


def test_each_step_rewards_prompts_on_its_single_input(tmp_path):
    tte = make_tte(tmp_path)
    row = tte.train_step()
    assert len(row["prompts"]) == 2 and tte.scorer.calls == 2  # 2 prompts x 1 instance
    inputs = [t.split(" input : ")[1].split(" sentiment")[0] for t in tte.scorer.texts]
    assert len(inputs) == 2 and len(set(inputs)) == 1 and inputs[0] in [ex.text for ex in tte.task.train]
    assert "kl" in row and "policy_loss" in row  # one APPO update on that instance's samples


def test_a_batch_of_inputs_makes_one_update_each(tmp_path):
    tte = make_tte(tmp_path, batch_size=2)
    row = tte.train_step()
    assert len(row["prompts"]) == 4 and tte.scorer.calls == 4
    assert isinstance(row["reward_mean"], float) and isinstance(row["kl"], float)


def test_anchor_check_scores_one_prompt_per_dev_input(tmp_path):
    tte = make_tte(tmp_path)
    perturb_policy(tte.agent)
    before = lora_snapshot(tte.agent, ANCHOR)
    decision = tte.anchor_check()
    assert tte.scorer.calls == 2 * len(tte.task.dev) == tte.anchor_check_calls()
    assert decision["anchor"] in ("update", "rollback", "keep")
    moved = any(not torch.equal(before[k], v) for k, v in lora_snapshot(tte.agent, ANCHOR).items())
    assert moved == (decision["anchor"] == "update")


def test_final_evaluation_is_one_prompt_per_test_input(tmp_path):
    tte = make_tte(tmp_path)
    out = tte.evaluate_final()
    rows = [json.loads(l) for l in (tmp_path / "tte_test_prompts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [ex.id for ex in tte.task.test]
    assert out["test_accuracy"] == sum(r["score"] for r in rows) / len(rows)
    assert out["protocol"] == "one prompt per input" and out["queue"] == []
    assert {"manual_test_accuracy", "empty_test_accuracy", "dev_accuracy"} <= set(out)


def test_score_pairs_matches_the_diagonal_of_score(tmp_path):
    task = toy_task()
    scorer = PairScorer(task)
    prompts = ["good one", "plain", "so good", "x"]
    pairs = scorer.score_pairs(prompts, task.test[:4])
    full = scorer.score(prompts, task.test[:4])
    diag = torch.stack([full.label_logprobs[i, i] for i in range(4)])
    assert torch.equal(pairs.label_logprobs[0], diag)
    assert pairs.accuracy.item() == full.correct.diagonal().mean().item()


def test_queue_rescore_is_refused_for_tte():
    from omegaconf import OmegaConf

    from promptrl.config import TTEConfig
    from promptrl.errors import UserError

    with pytest.raises(UserError, match="algo.queue_rescore=true is not for tte"):
        TTETrainer.check_config(OmegaConf.merge(OmegaConf.structured(TTEConfig), {"queue_rescore": True}))
