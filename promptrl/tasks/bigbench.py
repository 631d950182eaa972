"""BIG-Bench instruction induction (BBII): BIG-bench `task.json` files.

Multiple-choice tasks become classification over option letters (" A", " B", ...) with the
options listed in the input; generation tasks keep their `target` strings as gold answers. Split
as in the authors' code (REFERENCE §6.2): train = the first 30 examples, test = the rest, dev =
train (BBII has no other labelled data).

Files: <data_dir>/<local_name>/<task>/task.json — APE's `data/bigbench-ii` layout, which is also
BIG-bench's own `bigbench/benchmark_tasks/<task>/task.json` (set task.local_name to that folder).
"""

from __future__ import annotations

import ast
import json
import logging
import string
from pathlib import Path

from promptrl.errors import UserError
from promptrl.jsonl import read_text
from promptrl.tasks import Example, Task, task_from_config
from promptrl.tasks.induction import as_list

log = logging.getLogger(__name__)

TRAIN_SIZE = 30
LETTERS = string.ascii_uppercase


def target_scores(row: dict) -> dict[str, float]:
    scores = row["target_scores"]
    if isinstance(scores, str):  # some copies store the dict as a Python literal
        scores = ast.literal_eval(scores)
    return {str(k): float(v) for k, v in scores.items()}


def multiple_choice(row: dict) -> tuple[str, int, int]:
    """(input with lettered options, gold index, number of options)."""
    scores = target_scores(row)
    options = list(scores)
    gold = max(range(len(options)), key=lambda i: scores[options[i]])
    listed = "".join(f"{LETTERS[i]} : {opt}\n" for i, opt in enumerate(options))
    return f"{row['input'].strip()}\nChoices :\n{listed}".rstrip("\n"), gold, len(options)


def read_bigbench_json(path: Path) -> dict:
    """A task.json as a dict with an `examples` list of objects, or a one-line UserError naming
    the file, the line (or example) and what was expected."""
    try:
        data = json.loads(read_text(path, "BIG-bench file"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {e.lineno} column {e.colno} is not JSON ({e.msg}); expected BIG-bench's "
                        'task.json, {"examples": [...]}') from None
    rows = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise UserError(f'{path} has no "examples" list; expected BIG-bench\'s task.json, {{"examples": [...]}}')
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise UserError(f"{path} example {bad} is a JSON {type(rows[bad]).__name__}; expected an object with input and target(s)")
    return data


def example(path: Path, i: int, row: dict, fields: str, convert):
    """convert(row), or a one-line UserError naming the example and the fields it needs."""
    try:
        return convert(row)
    except (KeyError, TypeError, ValueError, SyntaxError, AttributeError) as e:
        problem = f"has no field {e}" if isinstance(e, KeyError) else f"is malformed ({type(e).__name__}: {e})"
        raise UserError(f"{path} example {i} {problem}; expected {fields}") from None


def load_bigbench(cfg, seed: int) -> Task:
    name = cfg.source_task or cfg.name
    if not cfg.data_dir:
        raise UserError(f"task {cfg.name!r} reads BIG-bench files; set PROMPTRL_DATA (or task.data_dir) to a directory "
                        f"holding {cfg.local_name or 'bigbench_ii'}/{name}/task.json (see docs/usage.md, 'BIG-Bench data')")
    path = Path(cfg.data_dir).expanduser() / (cfg.local_name or "bigbench_ii") / name / "task.json"
    if not path.is_file():
        raise UserError(f"task {cfg.name!r}: {path} does not exist; expected BIG-bench's <task>/task.json")
    data = read_bigbench_json(path)
    rows = data.get("examples") or []
    if len(rows) <= TRAIN_SIZE:
        raise UserError(f"{path} has {len(rows)} examples; BBII needs more than {TRAIN_SIZE} (train = the first {TRAIN_SIZE})")
    is_mc = "target_scores" in rows[0]
    if is_mc != (cfg.kind == "classification"):
        want = "classification" if is_mc else "generation"
        raise UserError(f"task {cfg.name!r} has kind={cfg.kind!r} but {path} is a {want} task; set task.kind={want}")
    # BIG-bench's own task prefix is the task's human-written instruction (APE's BBII baseline).
    examples, overrides = [], {"manual_prompt": cfg.manual_prompt or (data.get("task_prefix") or "").strip()}
    if is_mc:
        converted = [example(path, i, r, "input and target_scores", multiple_choice) for i, r in enumerate(rows)]
        n_options = max(n for _, _, n in converted)
        examples = [Example(id=f"bb/{i}", text=t, label=g) for i, (t, g, _) in enumerate(converted)]
        overrides["label_words"] = [f" {LETTERS[i]}" for i in range(n_options)]
        overrides["label_names"] = list(LETTERS[:n_options])
    else:
        for i, r in enumerate(rows):
            text, answers = example(path, i, r, "input and target", lambda r: (r["input"].strip(), as_list(r["target"])))
            examples.append(Example(id=f"bb/{i}", text=text, answers=tuple(answers)))
    train, test = examples[:TRAIN_SIZE], examples[TRAIN_SIZE:]
    log.info("task %s: %d train (= dev), %d test from %s", cfg.name, len(train), len(test), path)
    return task_from_config(cfg, train, list(train), test, str(path), **overrides)
