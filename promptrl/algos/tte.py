"""TTE-StablePrompt (test-time editing, REFERENCE §5, the clean version).

The agent writes an instruction for one input: its query is the TTE meta-prompt, k
demonstrations from train, and the current input. Training takes one training example per step
(the authors' batch size 1), samples `prompts_per_step` instructions for it, rewards each on
that single example (accuracy + margin, or the generation metric) and makes one APPO update.
With a group-relative estimator (algo.advantage=grpo|drgrpo|rloo) those instructions are the
group: each input's update compares the instructions written for it.
The anchor check compares policy and anchor on dev, each writing one instruction per dev input.
At test time every test input gets its own instruction from the policy; that per-input protocol
is what `test_accuracy` reports (there is no single best prompt).
"""

from __future__ import annotations

import json
import logging

import torch

from promptrl.agent import ANCHOR, POLICY
from promptrl.algos.appo import APPOTrainer, group_size, setting
from promptrl.errors import UserError
from promptrl.evaluate import evaluate_prompts
from promptrl.prompts import format_demos, tte_message
from promptrl.rundir import atomic_write_text
from promptrl.tasks import Example

log = logging.getLogger(__name__)


class TTETrainer(APPOTrainer):
    def tte_message(self, example: Example) -> str:
        """Meta-prompt + k training demonstrations (never the example itself) + the current input."""
        pool = [e for e in self.task.train if e.id != example.id]
        demos = self.rng.sample(pool, min(self.cfg.num_demos, len(pool)))
        return tte_message(self.cfg.meta_prompt, format_demos(self.task, demos), self.cfg.current_input_label, example.text)

    def longest_query_message(self) -> str:
        """The longest TTE query: over every input it will write a prompt for (train in training,
        dev at anchor checks, test at the end), its text plus the k longest demonstrations other
        than itself."""
        demo = self.demo_sizes()
        k = min(self.cfg.num_demos, len(self.task.train) - 1)
        top = sorted(self.task.train, key=lambda e: demo[e.id], reverse=True)[:k + 1]
        demos_for = lambda e: [d for d in top if d.id != e.id][:k]  # tte_message's pool leaves the input out
        inputs = [*self.task.train, *self.task.dev, *self.task.test]
        size = dict(zip((id(e) for e in inputs), self.token_counts([e.text for e in inputs])))
        worst = max(inputs, key=lambda e: size[id(e)] + sum(demo[d.id] for d in demos_for(e)))
        return tte_message(self.cfg.meta_prompt, format_demos(self.task, demos_for(worst)), self.cfg.current_input_label,
                           worst.text)

    def tte_query(self, example: Example) -> torch.Tensor:
        return self.agent.query_ids(self.tte_message(example), self.cfg.instruction_prefix)

    def ppo_step(self, batch, query=None) -> dict:
        """One APPO update per input of the batch; the step's row averages their numbers."""
        rows = [super(TTETrainer, self).ppo_step([ex], queries=[self.tte_query(ex)]) for ex in batch]
        if len(rows) == 1:
            return rows[0]
        merged = {"prompts": [p for r in rows for p in r["prompts"]]}
        for key, value in rows[0].items():
            if isinstance(value, (int, float, torch.Tensor)):
                merged[key] = sum(float(r[key]) for r in rows if key in r) / sum(key in r for r in rows)
        return merged

    def instance_prompts(self, examples: list[Example], adapter: str = POLICY) -> list[str]:
        return self.agent.sample_each([self.tte_query(ex) for ex in examples], adapter)

    def anchor_check_matters(self) -> bool:
        return True  # the final policy writes the test prompts, so the last check can change them

    @classmethod
    def check_config(cls, cfg) -> None:
        super().check_config(cfg)
        if setting(cfg, "groups_per_step") != 1:
            raise UserError(f"algo.groups_per_step={setting(cfg, 'groups_per_step')} is not for tte: a group is the "
                            "instructions for one input; expected 1 (algo.batch_size sets the inputs per step)")
        if cfg.queue_rescore:
            raise UserError("algo.queue_rescore=true is not for tte: its instructions are written for one input each; "
                            "expected false (use it with appo or ppo)")

    @classmethod
    def planned_calls(cls, cfg, task) -> int:
        checks = cfg.epochs // cfg.update_term  # the last check counts too (anchor_check_matters)
        return cfg.epochs * group_size(cfg) * len(task.train) + checks * cls.check_calls(cfg, len(task.dev))

    @classmethod
    def planned_samples(cls, cfg, task):
        return None  # one instruction per training input and step: the tokens depend on each input

    @staticmethod
    def check_calls(cfg, n_dev: int) -> int:
        return 2 * n_dev if cfg.reference == "anchor" else 0  # one instruction per dev input, policy and anchor

    @classmethod
    def final_calls(cls, cfg, task) -> int:
        return 3 * (len(task.dev) + len(task.test))  # manual, empty, and one prompt per input

    def anchor_check(self) -> dict:
        if self.cfg.reference != "anchor":
            return super().anchor_check()
        dev = self.task.dev
        policy_acc = self.scorer.score_pairs(self.instance_prompts(dev, POLICY), dev).accuracy.item()
        anchor_acc = self.scorer.score_pairs(self.instance_prompts(dev, ANCHOR), dev).accuracy.item()
        return self.decide(policy_acc, anchor_acc)

    def evaluate_final(self) -> dict:
        task = self.task
        manual, empty = evaluate_prompts(self.scorer, task, [task.manual_prompt, ""])
        out = {"manual_test_accuracy": manual["test_accuracy"], "manual_dev_accuracy": manual["dev_accuracy"],
               "empty_test_accuracy": empty["test_accuracy"], "empty_dev_accuracy": empty["dev_accuracy"],
               "queue": [], "n_dev": len(task.dev), "n_test": len(task.test), "protocol": "one prompt per input"}
        for split, examples in (("dev", task.dev), ("test", task.test)):
            prompts = self.instance_prompts(examples)
            scores = self.scorer.score_pairs(prompts, examples)
            out[f"{split}_accuracy"] = scores.accuracy.item()
            if self.out_dir is not None:
                correct = scores.correct[0].tolist()
                lines = [json.dumps({"id": ex.id, "input": ex.text, "prompt": p, "score": c})
                         for ex, p, c in zip(examples, prompts, correct)]
                atomic_write_text(self.out_dir / f"tte_{split}_prompts.jsonl", "\n".join(lines) + "\n")
        out["paper_test_accuracy"] = out["test_accuracy"]  # no oracle choice: every input has one prompt
        return out
