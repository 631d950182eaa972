"""task=custom: the user's own examples, from files (CSV, TSV, JSON Lines/JSON, Parquet) or a hub dataset.

The classes come from the data (sorted, or `task.label_names`), the label words default to the
class names with the leading space the template needs. Splits the user did not give are drawn
from train with the run's seed — test first, so nothing of it is ever seen in training — and
`task.shots` cuts train and dev to k examples per class as the paper does (REFERENCE §6.1).
Every problem with the data ends in one line naming the file, the row or value, and what would
be accepted: the first time a user meets this code is usually with a file it has not seen.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from promptrl.errors import UserError
from promptrl.tasks import Example, Task, task_from_config

log = logging.getLogger(__name__)

# extension -> (datasets builder, its options, the name users know the format by)
FORMATS = {
    ".csv": ("csv", {}, "CSV"),
    ".tsv": ("csv", {"delimiter": "\t"}, "TSV"),
    ".jsonl": ("json", {}, "JSON Lines"),
    ".json": ("json", {}, "JSON"),
    ".parquet": ("parquet", {}, "Parquet"),
}
ACCEPTED = "a CSV, TSV, JSON Lines, JSON or Parquet file (.csv .tsv .jsonl .json .parquet)"


def read_table(path: str, what: str):
    """A `datasets.Dataset` of the file's rows; `what` names the setting the path came from."""
    import datasets

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{what}: {str(p)!r} does not exist; expected {ACCEPTED}")
    ext = p.suffix.lower()
    if ext not in FORMATS:
        raise UserError(f"{what}: {str(p)!r} has the extension {ext or '(none)'!r}; expected {ACCEPTED}")
    builder, options, kind = FORMATS[ext]
    no_rows = UserError(f"{p} has no rows; expected a header row (or JSON objects) and at least one example")
    if p.stat().st_size == 0:
        raise no_rows
    try:
        ds = datasets.load_dataset(builder, data_files={"rows": str(p)}, split="rows", **options)
    except ValueError as e:
        if "corresponds to no data" not in str(e):  # datasets' words for a file without one example
            raise UserError(f"cannot read {p} as {kind} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                            f"expected {ACCEPTED}") from e
        raise no_rows from e
    except Exception as e:  # pandas, pyarrow and datasets each raise their own types for a bad file
        root = e
        while (root.__cause__ or root.__context__) is not None:  # datasets wraps the parser's own message
            root = root.__cause__ or root.__context__
        reason = next((line.strip() for line in str(root).splitlines() if line.strip()), "")[:200]
        raise UserError(f"cannot read {p} as {kind} ({type(root).__name__}: {reason}); expected {ACCEPTED}") from e
    if len(ds) == 0:
        raise no_rows
    return ds


@dataclass
class Split:
    """One source of rows: its name in messages, and each row's input and label (or answers)."""

    where: str
    texts: list[str]
    values: list  # classification: the raw label; generation: a tuple of accepted answers
    rows: list[int]  # 1-based row numbers in the source, for messages and example ids


def require_columns(ds, where: str, columns: dict[str, str]) -> None:
    for setting, col in columns.items():
        if col not in ds.column_names:
            raise UserError(f"{where} has no column {col!r} ({setting}); its columns are {ds.column_names}")


def normalise_label(value):
    """Labels as the user wrote them: integers stay integers (a float column that only holds
    whole numbers, as pandas reads an int column with a gap, is integers), text stays text."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_split(ds, where: str, cfg, input_col: str) -> Split:
    answer_col = cfg.target_field if cfg.kind == "generation" else cfg.label_field
    answer_setting = "task.target_field" if cfg.kind == "generation" else "task.label_field"
    if cfg.kind == "generation" and not answer_col:
        raise UserError("task.kind=generation needs task.target_field, the column holding the gold answers")
    require_columns(ds, where, {"task.input_field": input_col, answer_setting: answer_col})
    texts, values = input_texts(ds, where, input_col), ds[answer_col]
    out_values = []
    for i, v in enumerate(values):
        if cfg.kind == "generation":
            answers = tuple(str(a) for a in (v if isinstance(v, (list, tuple)) else [v]) if a is not None and str(a).strip())
            if not answers:
                raise UserError(f"{where} row {i + 1}: no answer in column {answer_col!r} (task.target_field); "
                                "every row needs a gold answer (a string, or a list of strings)")
            out_values.append(answers)
        else:
            v = normalise_label(v)
            if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
                raise UserError(f"{where} row {i + 1}: no label in column {answer_col!r} (task.label_field); "
                                "every row needs a class name or integer")
            if isinstance(v, (list, dict)):
                raise UserError(f"{where} row {i + 1}: label {v!r} in column {answer_col!r} is not a class; "
                                "expected a class name (string) or an integer")
            out_values.append(v)
    return Split(where, texts, out_values, list(range(1, len(texts) + 1)))


def input_texts(ds, where: str, input_col: str) -> list[str]:
    texts = ds[input_col]
    for i, text in enumerate(texts):
        if text is None or not str(text).strip():
            raise UserError(f"{where} row {i + 1}: empty input in column {input_col!r} (task.input_field); "
                            "every row needs an input text")
    return [str(t) for t in texts]


def sources(cfg, input_col: str) -> tuple[dict[str, Split], list[str] | None, str]:
    """The splits the user gave (train always), class names a hub ClassLabel defines, and a
    description of where the data came from."""
    files = cfg.data_files
    if files.train:
        given = {"train": files.train, "dev": files.dev, "test": files.test}
        splits = {name: read_split(read_table(path, f"task.data_files.{name}"), str(Path(path).expanduser()), cfg, input_col)
                  for name, path in given.items() if path}
        return splits, None, "files:" + ",".join(f"{k}={v}" for k, v in given.items() if v)
    if not cfg.hub_id:
        raise UserError("task=custom needs its data: task.data_files.train=PATH (CSV, TSV, JSONL, JSON or Parquet) "
                        "or task.hub_id=<hub dataset>")
    import datasets

    try:
        dd = datasets.load_dataset(cfg.hub_id, cfg.hub_config)
    except Exception as e:  # offline, no such dataset, a config it does not have
        raise UserError(f"cannot load dataset {cfg.hub_id!r} ({cfg.hub_config}) from the hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from e
    wanted = {"train": cfg.hub_train_split, "dev": cfg.hub_dev_split, "test": cfg.hub_test_split}
    if wanted["train"] not in dd:
        raise UserError(f"dataset {cfg.hub_id!r} has no split {wanted['train']!r} (task.hub_train_split); "
                        f"its splits are {list(dd)}")
    feature = dd[wanted["train"]].features.get(cfg.label_field) if cfg.kind == "classification" else None
    names = list(feature.names) if hasattr(feature, "names") else None
    splits = {}
    for name, split in wanted.items():
        if split and split in dd:
            s = read_split(dd[split], f"{cfg.hub_id}[{split}]", cfg, input_col)
            if names:  # a ClassLabel's -1 means "no gold label" (GLUE's test splits): such rows are left out
                keep = [i for i, v in enumerate(s.values) if v != -1]
                s = Split(s.where, [s.texts[i] for i in keep], [s.values[i] for i in keep], [s.rows[i] for i in keep])
            if s.texts:
                splits[name] = s
    return splits, names, f"hub:{cfg.hub_id}:{cfg.hub_config}"


def resolve_classes(cfg, splits: dict[str, Split], hub_names: list[str] | None):
    """(label names, label words, raw label -> class index). Integer labels index into the
    names when names are given (task.label_names or a hub ClassLabel); text labels must be one
    of them. Without names, the classes are the train labels, sorted."""
    train = splits["train"]
    names = [str(n) for n in cfg.label_names] or hub_names
    ints = all(isinstance(v, int) for s in splits.values() for v in s.values)
    if names:
        lookup = {i: i for i in range(len(names))} if ints else {n: i for i, n in enumerate(names)}
        given = "task.label_names" if cfg.label_names else "the dataset's ClassLabel names"
    else:
        found = sorted(set(train.values)) if ints else sorted({str(v) for v in train.values})
        names = [str(v) for v in found]
        lookup = {v: i for i, v in enumerate(found)}
        given = f"the training data ({train.where})"
    to_class = (lambda v: lookup.get(v)) if ints else (lambda v: lookup.get(str(v)))
    if len(names) < 2:
        raise UserError(f"{train.where} has {len(names)} class {names} in column {cfg.label_field!r} (task.label_field); "
                        "a classification task needs at least two")
    for s in splits.values():
        for row, v in zip(s.rows, s.values):
            if to_class(v) is None:
                accepted = f"0..{len(names) - 1} (indices into {names})" if ints and cfg.label_names else str(names)
                raise UserError(f"{s.where} row {row}: label {v!r} is not a class of {given}; expected one of {accepted}")
    words = [str(w) for w in cfg.label_words] or [" " + n.strip() for n in names]
    if len(words) != len(names):
        raise UserError(f"task.label_words has {len(words)} words for {len(names)} classes {names}; give one per class, in that order")
    first: dict[str, str] = {}
    for name, word in zip(names, words):
        if word in first:
            raise UserError(f"label names {first[word]!r} and {name!r} map to the same label word {word!r}; give each "
                            f"class its own word with task.label_words (one per class, in the order {names})")
        first[word] = name
    return names, words, to_class


def amount(size: float, total: int) -> int:
    """A fraction (< 1) or a count (>= 1) of `total` rows."""
    if size < 0:
        raise UserError(f"split size {size}; expected a fraction in [0, 1) or a number of rows >= 1")
    return round(size * total) if size < 1 else min(int(size), total)


def by_class(indices: list[int], classes: list[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i in indices:
        groups.setdefault(classes[i], []).append(i)
    return groups


def hold_out(indices: list[int], classes: list[int], size: float, rng: random.Random) -> tuple[list[int], list[int]]:
    """A stratified random part of `indices` (`size` of them, split across classes in proportion,
    never a class's last row) and the rest."""
    want = amount(size, len(indices))
    taken = []
    for _, idx in sorted(by_class(indices, classes).items()):
        idx = idx[:]
        rng.shuffle(idx)
        k = min(round(want * len(idx) / len(indices)), len(idx) - 1)
        taken += idx[:max(k, 0)]
    chosen = set(taken)
    return sorted(taken), [i for i in indices if i not in chosen]


def k_per_class(indices: list[int], classes: list[int], k: int, rng: random.Random, where: str, names: list[str] | None,
                need: int | None = None, hint: str = "") -> tuple[list[int], list[int]]:
    """k random rows of each class (k in all for generation) and the rest; too few is an error
    naming the class, its count and what `task.shots` needs."""
    groups = by_class(indices, classes)
    for c in range(len(names)) if names else [0]:
        have = len(groups.get(c, []))
        if have < (need or k):
            what = f"class {names[c]!r} has" if names else "it has"
            raise UserError(f"{where}: {what} {have} example{'s' if have != 1 else ''}; task.shots={k} needs {need or k}"
                            f"{hint}; lower task.shots or add examples")
    taken = []
    for _, idx in sorted(groups.items()):
        idx = idx[:]
        rng.shuffle(idx)
        taken += idx[:k]
    chosen = set(taken)
    return sorted(taken), [i for i in indices if i not in chosen]


def class_counts(classes: list[int], names: list[str] | None) -> str:
    if not names:
        return ""
    counts = Counter(classes)
    return " (" + ", ".join(f"{names[c]}: {counts.get(c, 0)}" for c in range(len(names))) + ")"


def load_custom(cfg, seed: int) -> Task:
    input_col = cfg.input_field or cfg.text_field
    splits, hub_names, source = sources(cfg, input_col)
    generation = cfg.kind == "generation"
    names, words, to_class = (None, None, lambda v: 0) if generation else resolve_classes(cfg, splits, hub_names)
    k = cfg.shots
    if k is not None and k < 1:
        raise UserError(f"task.shots={k}; expected a positive number of examples per class, or null (every row)")

    rng = random.Random(seed)
    train_src = splits["train"]
    train_classes = [to_class(v) for v in train_src.values]
    pool = list(range(len(train_src.texts)))
    notes = []
    picked: dict[str, tuple[Split, list[int]]] = {}
    # Test first: what is held out for the reported score never reaches train or dev.
    if "test" in splits:
        picked["test"] = (splits["test"], list(range(len(splits["test"].texts))))
    else:
        test_idx, pool = hold_out(pool, train_classes, cfg.test_size, rng)
        picked["test"] = (train_src, test_idx)
        notes.append(f"test drawn from {train_src.where} (task.test_size={cfg.test_size}, seed {seed})")
    if "dev" in splits:
        dev_src = splits["dev"]
        dev_idx = list(range(len(dev_src.texts)))
        if k is not None:
            dev_idx, _ = k_per_class(dev_idx, [to_class(v) for v in dev_src.values], k, rng, dev_src.where, names)
        picked["dev"] = (dev_src, dev_idx)
    elif k is not None:
        after = " after the test hold-out" if "test" not in splits else ""
        dev_idx, pool = k_per_class(pool, train_classes, k, rng, f"{train_src.where}{after}", names, need=2 * k,
                                    hint=f" ({k} train + {k} dev, as no task.data_files.dev is given)")
        picked["dev"] = (train_src, dev_idx)
        notes.append(f"dev drawn from {train_src.where} (task.shots={k} per class, seed {seed})")
    else:
        dev_idx, pool = hold_out(pool, train_classes, cfg.dev_size, rng)
        picked["dev"] = (train_src, dev_idx)
        notes.append(f"dev drawn from {train_src.where} (task.dev_size={cfg.dev_size}, seed {seed})")
    if k is not None:
        pool, _ = k_per_class(pool, train_classes, k, rng, train_src.where, names)
    picked["train"] = (train_src, pool)

    examples: dict[str, list[Example]] = {}
    for split, (src, idx) in picked.items():
        tag = "train" if src is train_src else split  # an id names the row of the file it came from
        examples[split] = [Example(id=f"{tag}/{src.rows[i]}", text=src.texts[i], label=-1 if generation else to_class(src.values[i]),
                                   answers=src.values[i] if generation else ()) for i in idx]
    had_test = bool(examples["test"])
    notes += drop_overlaps(examples, picked["test"][0].where)
    for split in ("train", "dev", "test"):
        if not examples[split]:
            src = picked[split][0]
            why = "every test input also occurs in train or dev" if split == "test" and had_test else f"no rows of {src.where} are left for it"
            size = f", or a larger task.{split}_size" if split != "train" else ""
            raise UserError(f"the {split} split is empty ({why}); give task.data_files.{split} or more rows{size}")
    sizes = [f"{split}: {len(examples[split])} examples" + class_counts([e.label for e in examples[split]], names)
             for split in ("train", "dev", "test")]
    if not generation:
        chosen = "task.label_names" if cfg.label_names else ("the ClassLabel" if hub_names else "train, sorted")
        notes.insert(0, f"classes ({chosen}): {names}; label words {words}")
    report = sizes + notes
    for line in report:
        log.info("task %s: %s", cfg.name, line)
    overrides = {"data_report": report}
    if not generation:
        overrides.update(label_names=names, label_words=words)
        if not cfg.manual_prompt:  # a plain instruction naming the classes: the bar a tuned prompt should clear
            overrides["manual_prompt"] = "Classify the input as one of: " + ", ".join(n.strip() for n in names) + "."
    return task_from_config(cfg, examples["train"], examples["dev"], examples["test"], f"{source}:seed{seed}", **overrides)


def drop_overlaps(examples: dict[str, list[Example]], test_where: str) -> list[str]:
    """Inputs in two splits, reported; those of test also in train or dev are dropped from it,
    so no run is scored on what it trained on or was selected with."""
    notes = []
    seen = {s: {e.text for e in examples[s]} for s in ("train", "dev")}
    both = sorted(seen["train"] & seen["dev"])
    if both:
        notes.append(f"{len(both)} input(s) occur in both train and dev, e.g. {both[0][:80]!r}")
    leaked = [e for e in examples["test"] if e.text in seen["train"] or e.text in seen["dev"]]
    if leaked:
        notes.append(f"{len(leaked)} test input(s) also occur in train or dev (e.g. {test_where} row "
                     f"{leaked[0].id.split('/')[-1]}: {leaked[0].text[:80]!r}); dropped from test")
        examples["test"] = [e for e in examples["test"] if e.text not in seen["train"] and e.text not in seen["dev"]]
    return notes
