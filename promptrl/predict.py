"""`promptrl predict`: a prompt (a train run's best_prompt.txt) applied to new inputs.

The inputs are scored in batches of `batch_size`, and each finished batch is appended to
predictions.jsonl and flushed to disk (fsync) before the next one starts, so a crash loses at
most the batch in flight. Run again into the same directory (`resume=<run dir>`, or the same
`hydra.run.dir`) and the rows already there are kept, a torn last line is dropped, and only the
rest is scored. predictions.csv is rewritten from the JSONL at the end, atomically.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from promptrl import progress
from promptrl.errors import UserError
from promptrl.evaluate import read_prompt_file
from promptrl.faults import crash_point
from promptrl.jsonl import read_jsonl_rows
from promptrl.rundir import (
    RunLock,
    atomic_write_text,
    ignored_overrides,
    run_dir,
    run_identity,
    save_run_info,
    saved_config,
    write_json,
)
from promptrl.tasks import Example, Task, load_task
from promptrl.tasks.custom import input_texts, normalise_label, read_table, require_columns
from promptrl.tasks.metrics import score_answer
from promptrl.tracking import print_table

log = logging.getLogger(__name__)
PREDICTIONS = "predictions.jsonl"
IDENTITY = "predict_identity.json"  # which prompt and target made the rows of predictions.jsonl


def read_inputs(cfg: DictConfig, task: Task) -> list[dict]:
    """Each row of input_file: its number, input text and, if the file has the task's label (or
    answer) column, the gold class index (or answers)."""
    if not cfg.input_file:
        raise UserError("promptrl predict needs input_file=PATH (CSV, TSV, JSONL, JSON or Parquet) with the inputs")
    ds = read_table(cfg.input_file, "input_file")
    where = str(Path(cfg.input_file).expanduser())
    input_col = cfg.task.input_field or cfg.task.text_field
    gold_col = cfg.task.target_field if task.is_generation else cfg.task.label_field
    require_columns(ds, where, {"task.input_field": input_col})
    texts = input_texts(ds, where, input_col)
    values = ds[gold_col] if gold_col and gold_col in ds.column_names else [None] * len(texts)
    names = task.label_names or [w.strip() for w in task.label_words]
    rows = []
    for i, (text, value) in enumerate(zip(texts, values)):
        gold = None
        if value is None or (isinstance(value, str) and not value.strip()):
            pass  # an unlabelled row: predicted, not scored
        elif task.is_generation:
            gold = [str(a) for a in (value if isinstance(value, list) else [value])]
        else:
            value = normalise_label(value)
            gold = names.index(str(value)) if str(value) in names else None
            if gold is None and isinstance(value, int) and 0 <= value < len(names):
                gold = value  # integer labels index the classes
            if gold is None:
                raise UserError(f"{where} row {i + 1}: label {value!r} is not a class of the task; expected one of {names}")
        rows.append({"row": i + 1, "input": text, "gold": gold})
    return rows


def rows_done(path: Path, inputs: list[dict]) -> list[dict]:
    """The predictions already on disk, after cutting a torn last line (a kill mid-write)."""
    done = read_jsonl_rows(path, truncate_torn=True)  # a corrupt line before the last: one line, not a traceback
    by_row = {r["row"]: r for r in inputs}
    for d in done:
        if d.get("row") not in by_row or by_row[d["row"]]["input"] != d.get("input"):
            raise UserError(f"{path} holds row {d.get('row')} for another input than {inputs[0]['input'][:40]!r}...; "
                            "predict into a new run directory")
    return done


def predict_batch(scorer, task: Task, prompt: str, batch: list[dict]) -> list[dict]:
    if task.is_generation:
        answers = scorer.answer(prompt, [r["input"] for r in batch], task.max_new_tokens, task.stop)
        scorer.calls += len(batch)
        out = []
        for r, answer in zip(batch, answers):
            row = {"row": r["row"], "input": r["input"], "prediction": answer}
            if r["gold"] is not None:
                row.update(answers=r["gold"], score=score_answer(task.metric, answer, tuple(r["gold"])))
            out.append(row)
        return out
    examples = [Example(id=f"input/{r['row']}", text=r["input"], label=-1 if r["gold"] is None else r["gold"]) for r in batch]
    scores = scorer.score([prompt], examples)
    # A written answer (target.chat.scoring=generate) that names no label is no prediction: null,
    # every class at 0, wrong where the label is known, not the first class at a uniform 1/C.
    named = scores.predictions[0] >= 0
    probs = torch.where(named.unsqueeze(-1), scores.probs[0], torch.zeros_like(scores.probs[0]))
    names = task.label_names or [w.strip() for w in task.label_words]
    out = []
    for r, p, best in zip(batch, probs.tolist(), scores.predictions[0].tolist()):
        row = {"row": r["row"], "input": r["input"], "prediction": names[best] if best >= 0 else None,
               "probabilities": {str(n): v for n, v in zip(names, p)}}
        if r["gold"] is not None:
            row.update(label=names[r["gold"]], correct=best == r["gold"])
        out.append(row)
    return out


def append_rows(path: Path, rows: list[dict]) -> None:
    """One batch on disk before the next is scored: a crash can tear at most the last line."""
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())


def csv_text(rows: list[dict], task: Task) -> str:
    names = [] if task.is_generation else [str(n) for n in (task.label_names or [w.strip() for w in task.label_words])]
    gold = any("label" in r or "answers" in r for r in rows)
    head = ["row", "input", "prediction"] + (["answers", "score"] if task.is_generation and gold else [])
    head += (["label", "correct"] if not task.is_generation and gold else []) + [f"p({n})" for n in names]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(head)
    for r in rows:
        line = [r["row"], r["input"], r["prediction"]]
        if task.is_generation and gold:
            line += [json.dumps(r.get("answers", [])), r.get("score", "")]
        if not task.is_generation and gold:
            line += [r.get("label", ""), r.get("correct", "")]
        writer.writerow(line + [f"{r['probabilities'][n]:.6f}" for n in names])
    return buf.getvalue()


def predictions_identity(cfg: DictConfig, task: Task, prompt: str) -> dict:
    """What decides a directory's predictions: the prompt (its hash), the target as a run's
    identity counts it (weights, dtype, backend; not the server's URL or timeouts) and how the
    task renders and scores an input. Rows made under another identity must not be mixed in."""
    return {"prompt_sha256": hashlib.sha256(prompt.encode("utf-8")).hexdigest(),
            **run_identity({"target": OmegaConf.to_container(cfg.target, resolve=True), "task": task.scoring_identity()})}


def check_identity(out: Path, identity: dict) -> None:
    path = out / IDENTITY
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved != identity:
            differs = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
            what = " and ".join("prompt" if k == "prompt_sha256" else k for k in differs)
            raise UserError(f"{out / PREDICTIONS} holds predictions of another {what}; predict into a new run "
                            "directory (or give the same prompt_file and target)")
    elif (out / PREDICTIONS).is_file() and (out / PREDICTIONS).stat().st_size:
        raise UserError(f"{out / PREDICTIONS} holds predictions of an unknown prompt and target (no {IDENTITY}); "
                        "predict into a new run directory")
    else:
        write_json(path, identity)


def find_predict_run(resume: str) -> Path:
    out = Path(resume).expanduser()
    if not (out / "config_resolved.yaml").is_file():
        raise UserError(f"resume={resume!r} is not a predict run directory (no config_resolved.yaml); "
                        "expected the directory of an earlier `promptrl predict`")
    return out


def run_predict(cfg: DictConfig) -> dict:
    from promptrl.engines import open_models

    start = time.time()
    out = find_predict_run(cfg.resume) if cfg.resume else run_dir()
    with ExitStack() as run:
        lock = RunLock(out)  # one writer of predictions.jsonl at a time
        run.callback(lock.release)
        if cfg.resume:
            if ignored_overrides():
                log.warning("resume=%s continues with the run's saved config; ignored: %s", cfg.resume, " ".join(ignored_overrides()))
            cfg = saved_config(out, cfg)
        elif not (out / PREDICTIONS).is_file():
            save_run_info(out, cfg)
        progress.set_enabled(cfg.logger.progress)
        if cfg.batch_size < 1:
            raise UserError(f"batch_size={cfg.batch_size}; expected a positive number of inputs per scoring call")
        if not cfg.prompt_file:
            raise UserError("promptrl predict needs prompt_file=PATH, e.g. a train run's best_prompt.txt")
        prompt = read_prompt_file(cfg.prompt_file, allow_empty=True)  # a run that kept the empty prompt
        task = load_task(cfg.task, cfg.seed, cfg.cache_dir)  # the classes and label words the prompt was tuned with
        check_identity(out, predictions_identity(cfg, task, prompt))
        inputs = read_inputs(cfg, task)
        path = out / PREDICTIONS
        done = rows_done(path, inputs)
        finished = {r["row"] for r in done}
        todo = [r for r in inputs if r["row"] not in finished]
        if done:
            log.info("%d of %d inputs already predicted in %s; scoring the other %d", len(done), len(inputs), path, len(todo))
        with ExitStack() as models:
            scorer = open_models(cfg, task, models)[0] if todo else None
            with progress.bar("predict", total=len(inputs), completed=len(done)) as bar:
                for i in range(0, len(todo), cfg.batch_size):
                    rows = predict_batch(scorer, task, prompt, todo[i:i + cfg.batch_size])
                    append_rows(path, rows)
                    done += rows
                    bar.update(completed=len(done))
                    crash_point("predict-after-batch")
        done.sort(key=lambda r: r["row"])
        atomic_write_text(out / "predictions.csv", csv_text(done, task))
        scored = [r for r in done if "correct" in r or "score" in r]
        results = {"task": task.name, "target": cfg.target.name, "prompt": prompt, "input_file": str(cfg.input_file),
                   "n_inputs": len(done), "n_labelled": len(scored), "target_calls": scorer.calls if scorer else 0,
                   "wall_time_s": time.time() - start}
        if scored:
            key = "score" if task.is_generation else "correct"
            results["accuracy"] = sum(float(r[key]) for r in scored) / len(scored)
            results["metric"] = task.metric
        write_json(out / "results.json", results)
    title = f"{len(done)} predictions in {path}"
    if scored:
        title += f"; {task.metric} {results['accuracy']:.4f} on the {len(scored)} labelled inputs"
        log.info("%s %.4f on %d labelled inputs", task.metric, results["accuracy"], len(scored))
    print_table(title, ["row", "input", "prediction"], [[r["row"], r["input"][:60], r["prediction"]] for r in done[:5]])
    log.info("predictions written to %s and %s", path, out / "predictions.csv")
    return results
