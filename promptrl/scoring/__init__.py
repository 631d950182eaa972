"""The target scorer: how good is each prompt on a set of task examples.

Every optimiser (APPO, PPO, APE, OPRO) sees the target only through `Scorer.score`, which takes
P prompts and N examples and answers in one batched call. That single hot path is where speed
work goes, and it is what makes budgets comparable: `calls` counts prompt x example scorings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from promptrl.errors import UserError
from promptrl.tasks import Example, Task


@dataclass
class ClassificationScores:
    """Scores of P prompts on N examples with C label words."""

    label_logprobs: torch.Tensor  # [P, N, C] log p(label word | rendered input), full-vocabulary softmax
    labels: torch.Tensor  # [N] gold class index

    @property
    def probs(self) -> torch.Tensor:
        """[P, N, C] softmax over the label words only (the paper's verbaliser distribution)."""
        return torch.softmax(self.label_logprobs, dim=-1)

    @property
    def predictions(self) -> torch.Tensor:
        return self.label_logprobs.argmax(-1)

    @property
    def correct(self) -> torch.Tensor:
        return (self.predictions == self.labels).float()

    @property
    def accuracy(self) -> torch.Tensor:
        """[P] fraction of examples each prompt gets right."""
        return self.correct.mean(-1)

    @property
    def margin(self) -> torch.Tensor:
        """[P] mean over examples of p(gold) - max p(wrong), softmax over label words, in [-1, 1]."""
        p = self.probs
        gold = p.gather(-1, self.labels.view(1, -1, 1).expand(p.shape[0], -1, 1)).squeeze(-1)
        wrong = p.scatter(-1, self.labels.view(1, -1, 1).expand(p.shape[0], -1, 1), float("-inf"))
        return (gold - wrong.max(-1).values).mean(-1)


class Scorer:
    """Base class: subclasses implement `_label_logprobs` for a flat list of rendered texts."""

    def __init__(self, task: Task, name: str):
        self.task = task
        self.name = name
        self.calls = 0  # prompt x example scorings
        self.tokens = 0  # target input tokens processed

    def score(self, prompts: list[str], examples: list[Example]) -> ClassificationScores:
        if not prompts or not examples:
            raise ValueError("score() needs at least one prompt and one example")
        texts = [self.task.render(p, ex.text) for p in prompts for ex in examples]
        lp = self._label_logprobs(texts, group_size=len(examples)).view(len(prompts), len(examples), -1)
        self.calls += len(texts)
        labels = torch.tensor([ex.label for ex in examples])
        return ClassificationScores(label_logprobs=lp, labels=labels)

    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        """[len(texts), C]; texts come prompt-major, `group_size` per prompt."""
        raise NotImplementedError


BACKENDS = ("hf", "vllm", "server")


def build_scorer(target_cfg, task: Task, cache_dir: str) -> Scorer:
    backend = target_cfg.backend
    if backend == "hf":
        from promptrl.scoring.hf import HFScorer

        return HFScorer.from_config(target_cfg, task, cache_dir)
    if backend in BACKENDS:
        raise UserError(f"target.backend={backend!r} is not available in this version; use target.backend=hf")
    raise UserError(f"unknown target.backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
