"""Tasks: few-shot splits, the template a prompt goes into, label words or answers, the metric.

Two kinds: `classification` (the target's next token is compared across label words) and
`generation` (the target writes an answer, scored against the gold answers by a text metric).
Loaders per data source live beside this module; `load_task` picks one by `task.loader`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from promptrl.errors import UserError


@dataclass(frozen=True)
class Example:
    id: str  # stable across runs ("<split>/<index>")
    text: str
    label: int = -1  # classification: the gold class index
    answers: tuple[str, ...] = ()  # generation: every accepted answer; the first is shown in demonstrations


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
    reward_metric: str = "f1"
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])
    category: str | None = None
    # What the loader decided about the data (sizes, splits drawn, overlaps dropped), one line
    # each, for the log and `promptrl check`.
    data_report: list[str] = field(default_factory=list)

    @property
    def is_generation(self) -> bool:
        return self.kind == "generation"

    def render(self, prompt: str, text: str) -> str:
        # lstrip: with an empty prompt the template's leading separator is noise, not context.
        return self.template.format(prompt=prompt, input=text).lstrip()

    def demo_output(self, example: Example) -> str:
        if self.is_generation:
            return example.answers[0]
        return self.label_words[example.label].strip()

    def scoring_identity(self) -> dict:
        """Everything about the task that changes a score besides the prompt and the input."""
        if self.is_generation:
            return {"template": self.template, "metric": self.metric, "reward_metric": self.reward_metric,
                    "max_new_tokens": self.max_new_tokens, "stop": list(self.stop)}
        return {"template": self.template, "label_words": self.label_words}


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


KINDS = ("classification", "generation")
LOADERS = ("classification", "instruction_induction", "bigbench", "mmlu", "openbookqa", "custom")
# Loaders that take the label words from the data: BIG-bench its letters, custom its classes.
WORDS_FROM_DATA = ("bigbench", "custom")


def check_task_config(cfg) -> None:
    if cfg.kind not in KINDS:
        raise UserError(f"task.kind {cfg.kind!r} is not supported; expected one of: {', '.join(KINDS)}")
    if cfg.loader not in LOADERS:
        raise UserError(f"task.loader {cfg.loader!r} is not supported; expected one of: {', '.join(LOADERS)}")
    validate_template(cfg.template)
    if cfg.kind == "classification":
        if cfg.loader not in WORDS_FROM_DATA and len(cfg.label_words) < 2:
            raise UserError(f"task.label_words {list(cfg.label_words)} needs at least two words")
        if cfg.loader != "custom" and len(set(cfg.label_words)) != len(cfg.label_words):  # custom names the classes
            raise UserError(f"task.label_words {list(cfg.label_words)} has duplicates; each class needs its own word")
    else:
        from promptrl.tasks.metrics import METRICS

        if cfg.metric not in METRICS:
            raise UserError(f"task.metric {cfg.metric!r} is not a generation metric; expected one of: {', '.join(METRICS)}")
        if cfg.reward_metric != "metric" and cfg.reward_metric not in METRICS:
            raise UserError(f"task.reward_metric {cfg.reward_metric!r}; expected 'metric' or one of: {', '.join(METRICS)}")
        if cfg.max_new_tokens < 1:
            raise UserError(f"task.max_new_tokens={cfg.max_new_tokens}; expected a positive number of tokens")
    if cfg.max_test_examples is not None and cfg.max_test_examples < 1:
        raise UserError(f"task.max_test_examples={cfg.max_test_examples}; expected a positive number or null (all)")


def load_task(cfg, seed: int, cache_dir: str | None = None) -> Task:
    """Build the task a run uses; `seed` picks the few-shot split and any test subsample.
    `cache_dir`: the run's cache_dir, where downloaded data is kept (instruction induction; None:
    $PROMPTRL_CACHE or ~/.cache/promptrl, the config's default)."""
    check_task_config(cfg)
    if cfg.loader == "classification":
        from promptrl.tasks.classification import load_classification as load
    elif cfg.loader == "instruction_induction":
        from promptrl.tasks.induction import load_instruction_induction

        def load(cfg, seed):
            return load_instruction_induction(cfg, seed, cache_dir)
    elif cfg.loader == "bigbench":
        from promptrl.tasks.bigbench import load_bigbench as load
    elif cfg.loader == "custom":
        from promptrl.tasks.custom import load_custom as load
    else:
        from promptrl.tasks.qa import load_qa as load
    task = load(cfg, seed)
    if cfg.max_test_examples is not None and cfg.max_test_examples < len(task.test):
        rng = random.Random(seed)
        task.test = sorted(rng.sample(task.test, cfg.max_test_examples), key=lambda e: e.id)
    return task


def task_from_config(cfg, train: list[Example], dev: list[Example], test: list[Example], source: str,
                     **overrides) -> Task:
    """A Task with the config's template, words and metrics around the loaded splits."""
    fields = dict(
        name=cfg.name, kind=cfg.kind, template=cfg.template, label_words=list(cfg.label_words),
        metric=cfg.metric, manual_prompt=cfg.manual_prompt, train=train, dev=dev, test=test, source=source,
        label_names=list(cfg.label_names), reward_metric=cfg.reward_metric if cfg.reward_metric != "metric" else cfg.metric,
        max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop), category=cfg.category,
    )
    fields.update(overrides)
    return Task(**fields)
