"""`promptrl check`: the data and the plan of a training run, before anything is spent.

It composes the same config `promptrl train` would (same overrides), loads the task's data and
the target's tokenizer only — no model, no agent — and prints what a run would see: the split
sizes and class balance, each label word's tokens, one rendered example and the target calls
the schedule asks for. Problems are the loader's own one-line errors, so a check that passes is
a run that gets past its data.
"""

from __future__ import annotations

from collections import Counter

from hydra.utils import get_class
from rich.console import Console
from rich.table import Table

from promptrl.errors import UserError
from promptrl.models import load_tokenizer
from promptrl.scoring import label_tokens
from promptrl.tasks import Task, load_task


def class_balance(task: Task) -> Table:
    table = Table(title=f"{task.name}: split sizes" + ("" if task.is_generation else " and class balance"))
    table.add_column("split")
    table.add_column("examples", justify="right")
    names = [] if task.is_generation else task.label_names or [w.strip() for w in task.label_words]
    for name in names:
        table.add_column(str(name), justify="right")
    for split in ("train", "dev", "test"):
        examples = getattr(task, split)
        counts = Counter(e.label for e in examples)
        table.add_row(split, str(len(examples)), *[str(counts.get(c, 0)) for c in range(len(names))])
    return table


def label_table(task: Task, tokenizer, target_name: str) -> tuple[Table, list[str]]:
    """Each label word's tokens, and notes on how they will be scored."""
    labels = label_tokens(tokenizer, task.label_words, target_name)
    table = Table(title=f"label words under the {target_name} tokenizer")
    for col in ("class", "label word", "tokens", "ids"):
        table.add_column(col)
    names = task.label_names or [w.strip() for w in task.label_words]
    for name, word, seq in zip(names, labels.words, labels.seqs):
        table.add_row(str(name), repr(word), str(tokenizer.convert_ids_to_tokens(list(seq))), str(list(seq)))
    notes = []
    if labels.single:
        notes.append("every label word is one token: one next-token read per input")
    else:
        notes.append(f"label words of up to {labels.longest} tokens: each is scored by the sum of its tokens' log-probs "
                     f"({len(labels.steps())} next-token reads per input on vllm/server, one row per label on hf)")
        firsts = Counter(labels.first)
        shared = [w for w, s in zip(labels.words, labels.seqs) if firsts[s[0]] > 1]
        if shared:
            notes.append(f"{', '.join(map(repr, shared))} share a first token; their later tokens decide between them")
    return table, notes


def plan(cfg, task: Task) -> list[str]:
    """The target calls of the run, in the budget's unit (prompt x example scorings)."""
    try:
        trainer_cls = get_class(cfg.algo._target_)
    except (ImportError, AttributeError):
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported; expected a class such as "
                        "promptrl.algos.appo.APPOTrainer") from None
    trainer_cls.check_config(cfg.algo)
    train = trainer_cls.planned_calls(cfg.algo, task)
    budget = cfg.budget.target_calls
    lines = [f"training ({cfg.algo.name}): {train} target calls by its schedule"]
    if budget is not None and budget < train:
        lines[0] += f", stopped by budget.target_calls={budget} (a run ends within one step after it)"
        train = budget
    final = trainer_cls.final_calls(cfg.algo, task)
    lines += [f"final evaluation: at most {final} (queue, manual and empty prompt on dev and test)",
              f"total: at most {train + final} target calls (cached scorings count too; they cost no forward pass)"]
    return lines


def run_check(cfg) -> dict:
    """Print the check; raises UserError (one line) for bad data or settings."""
    console = Console(soft_wrap=True)  # lines stay whole when piped or captured; tables still fit the width
    task = load_task(cfg.task, cfg.seed)
    console.print(f"[bold]data[/bold]: {task.source}")
    for line in task.data_report:
        console.print(f"  {line}")
    console.print(class_balance(task))
    tokenizer = load_tokenizer(cfg.target, cfg.cache_dir)
    if not task.is_generation:
        table, notes = label_table(task, tokenizer, cfg.target.name)
        console.print(table)
        for note in notes:
            console.print(f"  {note}")
    example = task.train[0]
    prompt = task.manual_prompt or "<the prompt>"
    answer = " " + example.answers[0] if task.is_generation else task.label_words[example.label]
    console.print(f"[bold]one rendered example[/bold] ({example.id}, with the manual prompt; the target is scored "
                  f"on what follows the template, here {answer!r}):")
    console.print(task.render(prompt, example.text) + answer, markup=False, highlight=False)
    lines = plan(cfg, task)
    console.print(f"[bold]planned target calls[/bold] (target {cfg.target.name}, backend {cfg.target.backend}):")
    for line in lines:
        console.print(f"  {line}")
    console.print("check passed: the data loads and the label words tokenise; start the run with the same "
                  "overrides and `promptrl train`")
    return {"train": len(task.train), "dev": len(task.dev), "test": len(task.test), "plan": lines}
