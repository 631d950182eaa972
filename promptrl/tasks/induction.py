"""Instruction induction (Honovich et al.; APE's copy): 24 tasks in `induce` / `execute` JSON files.

Files: <data_dir>/<local_name>/{induce,execute}/<task>.json, each
`{"examples": {"1": {"input": ..., "output": ...}, ...}}`. Without a local copy they are fetched
from `task.data_url` (APE's GitHub raw files) into the cache. Splits follow the authors' code
(REFERENCE §6.2) with its evaluation bug fixed: train = induce[:32], dev = induce[64:96] (the
whole induce set when it has at most 32 examples), and test = execute — the held-out file, never
the last training batch.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import random
import tempfile
import urllib.request
from pathlib import Path

from promptrl.errors import UserError
from promptrl.tasks import Example, Task, task_from_config

log = logging.getLogger(__name__)

TRAIN_SIZE = 32
DEV_SLICE = slice(64, 96)


def as_list(value) -> list[str]:
    """APE stores some answer lists as Python literals inside strings ("['big', 'pig']")."""
    if isinstance(value, str) and value.startswith("["):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [value]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def convert(task: str, row: dict, rng: random.Random) -> tuple[str, list[str]]:
    """(input text, gold answers) of one raw example under the task's loading rule."""
    if task == "cause_and_effect":
        cause, effect = row["cause"], row["effect"]
        first, second = (cause, effect) if rng.random() < 0.5 else (effect, cause)
        return f"Sentence 1: {first} Sentence 2: {second}", [cause]
    if task == "common_concept":
        # All items: the authors' code drops the last one, leaving two of the three objects.
        return ", ".join(as_list(row["items"])), as_list(row["all_common_concepts"])
    if task == "rhymes":
        return row["input"], as_list(row["other_rhymes"])
    if task.startswith("translation_"):
        return row["input"], as_list(row["possible_translations"])
    return row["input"], as_list(row["output"])


def fetch(cfg, split: str, cache_dir: str | None = None) -> Path:
    """The local JSON file of one split, downloaded into `<cache_dir>/data/` when there is no local
    copy. A download is checked (JSON with a non-empty `examples` object of examples) before it
    is cached, and written to a temp file of its own renamed into place, so concurrent jobs never
    see half a file and a bad answer (an error page) is never cached."""
    task = cfg.source_task or cfg.name
    if cfg.data_dir:
        path = Path(cfg.data_dir).expanduser() / (cfg.local_name or "instruction_induction") / split / f"{task}.json"
        if not path.is_file():
            raise UserError(f"task {cfg.name!r}: {path} does not exist; expected APE's {split}/{task}.json "
                            f"under the data dir (or unset PROMPTRL_DATA to download it)")
        return path
    if not cfg.data_url:
        raise UserError(f"task {cfg.name!r} has no data_dir and no data_url; set PROMPTRL_DATA to a local copy")
    url = cfg.data_url.format(task=task, split=split)
    cache = Path(cache_dir or os.environ.get("PROMPTRL_CACHE", "~/.cache/promptrl")).expanduser()
    path = cache / "data" / "instruction_induction" / split / f"{task}.json"
    if not path.is_file():
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                data = r.read()
        except OSError as e:
            raise UserError(f"cannot download {url} ({type(e).__name__}); when offline, set PROMPTRL_DATA "
                            "to a directory holding instruction_induction/{induce,execute}/") from e
        problem = induction_file_problem(data)
        if problem:
            raise UserError(f"downloaded {url}, but it is not an instruction-induction file ({problem}); expected "
                            '{"examples": {"1": {"input": ..., ...}, ...}}; check task.data_url')
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{task}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return path


def induction_file_problem(data: bytes) -> str | None:
    """What is wrong with the bytes of an instruction-induction file, or None."""
    try:
        parsed = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return f"line {line} is not UTF-8"
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    examples = parsed.get("examples") if isinstance(parsed, dict) else None
    if not isinstance(examples, dict) or not examples:
        return "no non-empty 'examples' object"
    bad = next((k for k, v in examples.items() if not isinstance(v, dict)), None)
    return None if bad is None else f"example {bad} is not an object"


def read_examples(path: Path, task: str, split: str, rng: random.Random) -> list[Example]:
    problem = induction_file_problem(path.read_bytes())
    if problem:
        raise UserError(f"{path} is not an instruction-induction file ({problem}); expected {{\"examples\": {{...}}}}")
    rows = json.loads(path.read_bytes().decode("utf-8"))["examples"]
    examples = []
    for i, key in enumerate(sorted(rows, key=lambda k: int(k) if str(k).isdigit() else k)):
        try:
            text, answers = convert(task, rows[key], rng)
        except KeyError as e:
            raise UserError(f"{path} example {key} has no field {e}; task {task!r} needs it") from None
        examples.append(Example(id=f"{split}/{i}", text=text, answers=tuple(answers)))
    if not examples:
        raise UserError(f"{path} has no examples")
    return examples


def load_instruction_induction(cfg, seed: int, cache_dir: str | None = None) -> Task:
    """`cache_dir`: where downloads are cached (the run's cache_dir; None: $PROMPTRL_CACHE or ~/.cache/promptrl)."""
    task = cfg.source_task or cfg.name
    rng = random.Random(seed)  # only cause_and_effect's sentence order
    induce_file = fetch(cfg, "induce", cache_dir)
    induce = read_examples(induce_file, task, "induce", rng)
    test = read_examples(fetch(cfg, "execute", cache_dir), task, "execute", rng)
    train = induce[:TRAIN_SIZE]
    if len(induce) <= TRAIN_SIZE:  # cause_and_effect, common_concept, informal_to_formal
        dev = induce
    else:
        dev = induce[DEV_SLICE] or induce[TRAIN_SIZE:]
    source = str(induce_file.parent.parent)
    log.info("task %s: %d train, %d dev, %d test from %s", cfg.name, len(train), len(dev), len(test), source)
    return task_from_config(cfg, train, dev, test, source)
