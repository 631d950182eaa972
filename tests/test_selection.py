"""The final evaluation's guard: the dev-selected prompt against the manual and the empty prompt,
example by example (promptrl.evaluate.guard_against_baselines), and algo.keep_baseline."""

import logging

import pytest
import torch

from promptrl.errors import UserError
from promptrl.evaluate import final_evaluation, paired_sign_test
from promptrl.scoring import ClassificationScores, Scorer
from promptrl.tasks import Example, Task

DEV, TEST = 32, 48


class RightOnTheFirstK(Scorer):
    """A prompt gets the first round(quality * N) examples of a split right and the rest wrong
    (by each example's index in its split, so a split scored in pieces scores the same)."""

    def __init__(self, task, quality):
        super().__init__(task, "first-k")
        self.quality = quality

    def score(self, prompts, examples):
        labels = torch.tensor([e.label for e in examples])
        lp = torch.full((len(prompts), len(examples), 2), -5.0)
        index = torch.tensor([int(e.id.split("/")[1]) for e in examples])
        split = {"dev": DEV, "test": TEST}[examples[0].id.split("/")[0]]
        for i, p in enumerate(prompts):
            right = index < round(self.quality[p] * split)
            lp[i, torch.arange(len(examples)), torch.where(right, labels, 1 - labels)] = -0.1
        self.calls += len(prompts) * len(examples)
        return ClassificationScores(label_logprobs=lp, labels=labels)


def toy_task():
    examples = lambda n, split: [Example(id=f"{split}/{i}", text=f"text {i}", label=i % 2) for i in range(n)]
    return Task(name="toy", kind="classification", template="{prompt}\nInput: {input}\nOutput:", label_words=[" no", " yes"],
                metric="accuracy", manual_prompt="Is it yes?", train=examples(8, "train"), dev=examples(DEV, "dev"),
                test=examples(TEST, "test"))


def evaluate(quality, **kw):
    task = toy_task()
    queue = [{"prompt": p, "reward": 1.0, "step": 0} for p in quality if p not in ("", "Is it yes?")]
    return final_evaluation(RightOnTheFirstK(task, quality), task, queue, **kw)


def test_sign_test_counts_wins_and_losses_and_leaves_ties_out():
    assert paired_sign_test([1, 0, 1, 1, 0], [0, 1, 1, 0, 0]) == (2, 1, 0.5)  # P(X >= 2 | n=3) = 4/8
    wins, losses, p = paired_sign_test([1] * 8 + [0] * 24, [0] * 32)
    assert (wins, losses) == (8, 0) and p == pytest.approx(0.5 ** 8)
    assert paired_sign_test([1, 0], [1, 0]) == (0, 0, 1.0)


def test_a_clear_dev_lead_is_significant_and_the_prompt_is_handed_back():
    out = evaluate({"learned": 0.75, "Is it yes?": 0.5, "": 0.25})
    g = out["guard"]
    assert g["baseline"] == "manual" and (g["wins"], g["losses"]) == (8, 0) and g["significant"]
    assert out["best_prompt"] == "learned" and out["guard_test_accuracy"] == out["test_accuracy"] == 0.75
    assert "dev_correct" not in out["queue"][0]  # per-example lists stay out of results.json


def test_a_lead_within_noise_is_reported_and_with_keep_baseline_the_baseline_is_kept(caplog):
    quality = {"learned": 0.5625, "Is it yes?": 0.25, "": 0.5}  # 18 vs 16 of 32 dev: p = 0.25
    with caplog.at_level(logging.WARNING, logger="promptrl.evaluate"):
        out = evaluate(quality)
    assert out["guard"]["baseline"] == "empty" and not out["guard"]["significant"]
    assert out["guard"]["p_value"] == pytest.approx(0.25)
    assert out["best_prompt"] == "learned" and out["test_accuracy"] == 0.5625  # the paper's rule, said aloud
    assert out["guard_test_accuracy"] == 0.5 and "kept_baseline" not in out
    assert "not significantly better on dev than the empty prompt" in caplog.text and "handed back anyway" in caplog.text

    kept = evaluate(quality, keep_baseline=True)
    assert kept["best_prompt"] == "" and kept["kept_baseline"] == "empty"
    assert kept["test_accuracy"] == kept["guard_test_accuracy"] == 0.5 and kept["dev_accuracy"] == 0.5
    assert kept["paper_test_accuracy"] == 0.5625  # the queue's own numbers are unchanged


def test_baseline_alpha_out_of_range_is_one_line():
    from omegaconf import OmegaConf

    from promptrl.algos.base import check_common
    from promptrl.config import APPOConfig

    with pytest.raises(UserError, match=r"algo.baseline_alpha=1.5; expected a significance level in \(0, 1\)"):
        check_common(OmegaConf.merge(OmegaConf.structured(APPOConfig), {"baseline_alpha": 1.5}))
