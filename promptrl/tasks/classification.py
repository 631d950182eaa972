"""Few-shot text classification from local LM-BFF files or from the Hugging Face hub."""

from __future__ import annotations

import csv
import io
import logging
import random
import string
from pathlib import Path

from promptrl.errors import UserError
from promptrl.jsonl import read_text
from promptrl.tasks import Example, Task, task_from_config

log = logging.getLogger(__name__)


def read_tsv(path: Path, text_field: str, label_field: str, n_labels: int, split: str) -> list[Example]:
    if not path.is_file():
        raise UserError(f"data file {path} does not exist")
    reader = csv.reader(io.StringIO(read_text(path, "data file"), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    rows = [(reader.line_num, row) for row in reader if row]  # (line, fields); blank lines skipped
    if len(rows) < 2:
        raise UserError(f"data file {path} is empty; expected a header line and at least one example")
    header = rows[0][1]
    for col in (text_field, label_field):
        if col not in header:
            raise UserError(f"data file {path} has no column {col!r}; its columns are {header}")
    ti, li = header.index(text_field), header.index(label_field)
    examples = []
    for i, (line, row) in enumerate(rows[1:]):
        if len(row) <= max(ti, li):
            raise UserError(f"{path} line {line}: {len(row)} tab-separated field(s); expected {len(header)}, "
                            f"the header's {header}")
        try:
            label = int(row[li])
        except ValueError:
            raise UserError(f"{path} line {line}: label {row[li]!r} is not an integer") from None
        if not 0 <= label < n_labels:
            raise UserError(f"{path} line {line}: label {label} is out of range; expected 0..{n_labels - 1}")
        examples.append(Example(id=f"{split}/{i}", text=row[ti], label=label))
    return examples


def pick_local_split(root: Path, seed: int) -> str:
    """`16-<seed>` when it exists, else the seed-th of the available splits (LM-BFF ships seeds
    13, 21, 42, 87, 100, so seeds 0..4 map onto them in that order)."""
    splits = sorted((p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("16-")),
                    key=lambda s: int(s.split("-")[1]))
    if not splits:
        raise UserError(f"no few-shot split directories (16-<seed>/) in {root}")
    want = f"16-{seed}"
    return want if want in splits else splits[seed % len(splits)]


def load_local(cfg, seed: int, n_labels: int) -> tuple[list[Example], list[Example], list[Example], str]:
    data_dir = Path(cfg.data_dir).expanduser()
    if not data_dir.is_dir():
        raise UserError(f"data dir {str(data_dir)!r} (task.data_dir / PROMPTRL_DATA) does not exist")
    root = data_dir / cfg.local_name
    if not root.is_dir():
        raise UserError(f"task {cfg.name!r}: {root} does not exist; expected <data_dir>/{cfg.local_name}/16-<seed>/")
    split = pick_local_split(root, seed)
    args = ("sentence", "label", n_labels)
    train = read_tsv(root / split / "train.tsv", *args, split=f"{split}/train")
    dev = read_tsv(root / split / "dev.tsv", *args, split=f"{split}/dev")
    test = read_tsv(root / "test.tsv", *args, split="test")
    return train, dev, test, f"{root}/{split}"


def balanced_split(rows: list[tuple[str, int]], shots: int, n_labels: int, seed: int):
    """REFERENCE §6.1: shuffle each label's pool, halve it, take `shots` from the first half as
    train and `shots` from the second half as dev (so the two never overlap)."""
    rng = random.Random(seed)
    by_label: dict[int, list[int]] = {c: [] for c in range(n_labels)}
    for i, (_, label) in enumerate(rows):
        if 0 <= label < n_labels:  # drops the -1 "no gold label" rows of SNLI/MNLI
            by_label[label].append(i)
    train, dev = [], []
    for label, idx in by_label.items():
        rng.shuffle(idx)
        half = len(idx) // 2
        if half < shots:
            raise UserError(f"label {label} has {len(idx)} examples; {2 * shots} are needed for {shots}-shot train+dev")
        train += idx[:shots]
        dev += idx[half:half + shots]
    rng.shuffle(train)
    rng.shuffle(dev)
    as_examples = lambda ids: [Example(id=f"hubtrain/{i}", text=rows[i][0], label=rows[i][1]) for i in ids]
    return as_examples(train), as_examples(dev)


def input_columns(cfg) -> list[str]:
    """The data columns an input is built from: text_field, or the fields named in input_format."""
    if not cfg.input_format:
        return [cfg.text_field]
    names = [f for _, f, _, _ in string.Formatter().parse(cfg.input_format) if f]
    if not names or any(not n.isidentifier() for n in names):
        raise UserError(f"task.input_format {cfg.input_format!r} must name columns like {{premise}} and {{hypothesis}}")
    return list(dict.fromkeys(names))


def load_hub(cfg, seed: int, n_labels: int):
    if not cfg.hub_id:
        raise UserError(f"task {cfg.name!r} has no hub_id; set PROMPTRL_DATA or task.data_dir to local files")
    import datasets

    def get(split):
        try:
            ds = datasets.load_dataset(cfg.hub_id, cfg.hub_config, split=split)
        except Exception as e:  # offline, missing dataset, renamed split: all end the run the same way
            raise UserError(
                f"cannot load dataset {cfg.hub_id!r} split {split!r} from the hub ({type(e).__name__}); "
                "when offline, set PROMPTRL_DATA or task.data_dir to local files"
            ) from e
        for col in (*input_columns(cfg), cfg.label_field):
            if col not in ds.column_names:
                raise UserError(f"dataset {cfg.hub_id!r} has no column {col!r}; its columns are {ds.column_names}")
        if not cfg.input_format:
            return list(zip(ds[cfg.text_field], ds[cfg.label_field]))
        return [(cfg.input_format.format(**row), row[cfg.label_field]) for row in ds]

    train, dev = balanced_split(get(cfg.hub_train_split), cfg.shots_per_label, n_labels, seed)
    test_rows = [r for r in get(cfg.hub_test_split) if 0 <= r[1] < n_labels]
    test = [Example(id=f"test/{i}", text=t, label=y) for i, (t, y) in enumerate(test_rows)]
    return train, dev, test, f"hub:{cfg.hub_id}:seed{seed}"


def load_classification(cfg, seed: int) -> Task:
    n_labels = len(cfg.label_words)
    input_columns(cfg)  # a malformed input_format fails before any data is read
    if cfg.data_dir and cfg.local_name:  # hub-only tasks ignore PROMPTRL_DATA
        train, dev, test, source = load_local(cfg, seed, n_labels)
    else:
        train, dev, test, source = load_hub(cfg, seed, n_labels)
    log.info("task %s: %d train, %d dev, %d test from %s", cfg.name, len(train), len(dev), len(test), source)
    return task_from_config(cfg, train, dev, test, source)
