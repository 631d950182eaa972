"""Multiple-choice QA from the hub: MMLU (cais/mmlu) and OpenbookQA (allenai/openbookqa).

Classification over the letters " A".." D"; the input lists the lettered choices (OpenbookQA adds
its supporting fact as a hint, as the authors' code does). Training data is the hub's
`validation` split, as in the paper; it is split in seeded halves, the first train (the reward
pool and the meta-prompt demonstrations), the second dev (the APPO comparison and the final
selection), so neither touches test. Test is the hub's `test` split.
"""

from __future__ import annotations

import logging
import random

from promptrl.errors import UserError
from promptrl.tasks import Example, Task, task_from_config

log = logging.getLogger(__name__)

LETTERS = "ABCD"


def choices_block(choices: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]} : {c}" for i, c in enumerate(choices))


def mmlu_row(row: dict) -> tuple[str, int]:
    return f"{row['question'].strip()}\nChoices :\n{choices_block(row['choices'])}", int(row["answer"])


def openbookqa_row(row: dict) -> tuple[str, int]:
    labels, texts = row["choices"]["label"], row["choices"]["text"]
    order = sorted(range(len(labels)), key=lambda i: labels[i])
    text = f"{row['question_stem'].strip()}\nChoices :\n{choices_block([texts[i] for i in order])}"
    if row.get("fact1"):
        text += f"\nHint : {row['fact1']}"
    return text, LETTERS.index(row["answerKey"].strip())


FORMATS = {"mmlu": (mmlu_row, ["question", "choices", "answer"]),
           "openbookqa": (openbookqa_row, ["question_stem", "choices", "answerKey"])}


def load_split(cfg, split: str) -> list[tuple[str, int]]:
    import datasets

    convert, columns = FORMATS[cfg.loader]
    try:
        ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
    except Exception as e:  # offline or missing: the same one-line message
        raise UserError(f"cannot load dataset {cfg.hub_id!r} ({cfg.hub_config}) split {split!r} from the hub "
                        f"({type(e).__name__}); when offline, put a copy in the datasets cache (HF_DATASETS_CACHE) "
                        "or set task.hub_id to a local directory") from e
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise UserError(f"dataset {cfg.hub_id!r} has no column(s) {missing}; its columns are {ds.column_names}")
    return [convert(row) for row in ds]


def load_qa(cfg, seed: int) -> Task:
    if cfg.kind != "classification":
        raise UserError(f"task {cfg.name!r}: QA tasks are classification over letters; got task.kind={cfg.kind!r}")
    pool = load_split(cfg, cfg.hub_train_split)
    test_rows = load_split(cfg, cfg.hub_test_split)
    if len(pool) < 2:
        raise UserError(f"dataset {cfg.hub_id!r} split {cfg.hub_train_split!r} has {len(pool)} rows; need at least 2")
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    half = len(order) // 2
    as_examples = lambda ids, tag: [Example(id=f"{tag}/{i}", text=pool[i][0], label=pool[i][1]) for i in sorted(ids)]
    train, dev = as_examples(order[:half], "pool"), as_examples(order[half:], "pool")
    test = [Example(id=f"test/{i}", text=t, label=y) for i, (t, y) in enumerate(test_rows)]
    source = f"hub:{cfg.hub_id}:{cfg.hub_config}:seed{seed}"
    log.info("task %s: %d train, %d dev, %d test from %s", cfg.name, len(train), len(dev), len(test), source)
    return task_from_config(cfg, train, dev, test, source)
