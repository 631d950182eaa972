"""Tasks: few-shot splits, the template a prompt goes into, label words and the metric."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from promptrl.errors import UserError


@dataclass(frozen=True)
class Example:
    id: str  # stable across runs ("<split>/<index>"): the key of the prompt-score cache
    text: str
    label: int


@dataclass
class Task:
    name: str
    kind: str
    template: str
    label_words: list[str]
    metric: str
    manual_prompt: str
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    source: str = ""  # where the data came from, for the run record
    label_names: list[str] = field(default_factory=list)

    def render(self, prompt: str, text: str) -> str:
        # lstrip: with an empty prompt the template's leading separator is noise, not context.
        return self.template.format(prompt=prompt, input=text).lstrip()

    def demo_output(self, example: Example) -> str:
        return self.label_words[example.label].strip()


def validate_template(template: str) -> None:
    if "{prompt}" not in template or "{input}" not in template:
        raise UserError(
            f"task.template {template!r} must contain both '{{prompt}}' and '{{input}}'"
        )
    try:
        template.format(prompt="", input="")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(
            f"task.template {template!r} has a placeholder other than {{prompt}} and {{input}} ({e}); "
            "write literal braces as {{ and }}"
        ) from None


def load_task(cfg, seed: int) -> Task:
    """Build the task a run uses; `seed` picks the few-shot split and any test subsample."""
    if cfg.kind != "classification":
        raise UserError(f"task.kind {cfg.kind!r} is not supported; expected: classification")
    validate_template(cfg.template)
    if len(cfg.label_words) < 2:
        raise UserError(f"task.label_words {list(cfg.label_words)} needs at least two words")
    if len(set(cfg.label_words)) != len(cfg.label_words):
        raise UserError(f"task.label_words {list(cfg.label_words)} has duplicates; each class needs its own word")
    if cfg.max_test_examples is not None and cfg.max_test_examples < 1:
        raise UserError(f"task.max_test_examples={cfg.max_test_examples}; expected a positive number or null (all)")
    from promptrl.tasks.classification import load_classification

    task = load_classification(cfg, seed)
    if cfg.max_test_examples is not None and cfg.max_test_examples < len(task.test):
        rng = random.Random(seed)
        task.test = sorted(rng.sample(task.test, cfg.max_test_examples), key=lambda e: e.id)
    return task
