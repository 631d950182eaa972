"""`promptrl check`: the data and the plan of a training run, before anything is spent.

It composes the same config `promptrl train` would (same overrides), loads the task's data and
the target's tokenizer only — no model, no agent — and prints what a run would see: the split
sizes and class balance, each label word's tokens, one rendered example and the target calls
the schedule asks for. Problems are the loader's own one-line errors, so a check that passes is
a run that gets past its data.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from promptrl.errors import UserError
from promptrl.models import load_tokenizer
from promptrl.projection import project
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


def chat_label_notes(target, task: Task) -> list[str]:
    """target.backend=chat: how the answers will be read, or the UserError a run would stop with."""
    from promptrl.scoring.chat import PLACEMENTS, SCORINGS, answer_forms, label_heads

    chat = target.chat
    for key, value, allowed in (("scoring", chat.scoring, SCORINGS), ("placement", chat.placement, PLACEMENTS)):
        if value not in allowed:
            raise UserError(f"target.chat.{key}={value!r}; expected one of: {', '.join(allowed)}")
    where = f"chat endpoint {chat.base_url}, model {chat.model or target.model!r}, instruction in the {chat.placement} message"
    if task.is_generation:
        return [f"{where}; greedy answers scored with {task.metric}"]
    if chat.scoring == "logprobs":
        heads = label_heads(task.label_words)
        return [f"{where}; each label word's log-prob is read from the top 20 of the answer's first token, "
                f"as {', '.join(map(repr, heads))} (stripped, case-sensitive)"]
    forms = answer_forms(task)
    return [f"{where}; greedy answers of up to {chat.answer_tokens} tokens read as "
            + "; ".join(" or ".join(map(repr, sorted(f))) for f in forms) + " (case- and space-insensitive)"]


def trainer_class(cfg):
    try:
        trainer_cls = get_class(cfg.algo._target_)
    except (ImportError, AttributeError):
        raise UserError(f"algo._target_={cfg.algo._target_!r} cannot be imported; expected a class such as "
                        "promptrl.algos.appo.APPOTrainer") from None
    trainer_cls.check_config(cfg.algo)
    return trainer_cls


def plan_calls(cfg, task: Task) -> dict:
    """The run's target calls in the budget's unit (prompt x example scorings): `schedule`, what
    the algorithm's own schedule asks for (None: only a budget ends it, as for GEPA without
    algo.max_metric_calls); `train`, what training makes once the budget applies (a run may end up
    to one step past a budget: the budget is checked before each step); `final`, at most this
    many in the final evaluation."""
    trainer_cls = trainer_class(cfg)
    schedule = trainer_cls.planned_calls(cfg.algo, task)
    budget = cfg.budget.target_calls
    if schedule is None and budget is None:
        raise UserError(f"algo={cfg.algo.name} has no schedule of its own; set budget.target_calls")
    train = budget if schedule is None or (budget is not None and budget < schedule) else schedule
    return {"schedule": schedule, "budget": budget, "train": train, "final": trainer_cls.final_calls(cfg.algo, task)}


def plan(cfg, task: Task, calls: dict | None = None) -> list[str]:
    """The plan of one run as lines of text."""
    c = calls or plan_calls(cfg, task)
    schedule = "no schedule of its own" if c["schedule"] is None else f"{c['schedule']} target calls by its schedule"
    lines = [f"training ({cfg.algo.name}): {schedule}"]
    if c["train"] != c["schedule"]:
        lines[0] += f", stopped by budget.target_calls={c['budget']} (a run ends within one step after it)"
    lines += [f"final evaluation: at most {c['final']} (queue, manual and empty prompt on dev and test)",
              f"total: at most {c['train'] + c['final']} target calls (cached scorings count too; they cost no forward pass)"]
    return lines


# --- throughput of earlier runs: the time estimate ------------------------------------------------
def earlier_runs(root: Path = Path("outputs")) -> list[dict]:
    """Seconds per target call of the finished runs under `root` (this machine's run
    directories): while training, and in the final evaluation (model loading included)."""
    runs = []
    for results in root.glob("**/results.json"):
        try:
            r = json.loads(results.read_text())
            saved = OmegaConf.load(results.parent / "config_resolved.yaml")
            backend = saved.target.backend
        except Exception:
            continue  # a run of another version or a partial file: no estimate from it
        calls, with_eval = r.get("target_calls") or 0, r.get("target_calls_with_eval") or 0
        train_s, wall_s = r.get("train_time_s"), r.get("wall_time_s")
        if not calls or train_s is None or wall_s is None:
            continue
        runs.append({"target": r.get("target"), "backend": backend, "agent": r.get("agent"), "algo": r.get("algo"),
                     "train_rate": train_s / calls,
                     "eval_rate": (wall_s - train_s) / (with_eval - calls) if with_eval > calls else None})
    return runs


def estimate_seconds(cfg, calls: dict, runs: list[dict]) -> tuple[float | None, int]:
    """Estimated wall time of a run from earlier runs of the same target (name and backend),
    agent and algorithm — the median seconds per call, training and final evaluation apart —
    and how many runs it rests on; (None, 0) without such runs."""
    same = [r for r in runs if (r["target"], r["backend"], r["agent"], r["algo"])
            == (cfg.target.name, cfg.target.backend, cfg.agent.name, cfg.algo.name)]
    evals = [r["eval_rate"] for r in runs if (r["target"], r["backend"]) == (cfg.target.name, cfg.target.backend)
             and r["eval_rate"] is not None]
    if not evals or (calls["train"] and not same):
        return None, 0
    train = statistics.median(r["train_rate"] for r in same) * calls["train"] if calls["train"] else 0.0
    return train + statistics.median(evals) * calls["final"], len(same)


def tokens(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e6:.2f}M" if n >= 10**6 else f"{n / 1e3:.1f}k" if n >= 10**4 else str(n)


def usd(amount: float | None) -> str:
    return "-" if amount is None else f"${amount:,.4f}" if amount < 1 else f"${amount:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


# --- `promptrl train --plan`: every job of a run or a sweep -----------------------------------------
def sweep_jobs(conf_dir: str, args: list[str], multirun: bool) -> list[list[str]]:
    """The overrides of each job, as Hydra's basic sweeper expands them: hydra.sweeper.params of
    the composed config (an experiment's sweep) and then the command line. With the Optuna
    sweeper, each trial is a draw from its search space: the jobs are the discrete grid of that
    space (choice, range), continuous parameters at their low end (no planned call depends on
    them), and `n_trials` says how many will run."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [args]
    with initialize_config_dir(conf_dir, version_base="1.3", job_name="plan"):
        base = compose("train", overrides=[a for a in args if "," not in a and "(" not in a], return_hydra_config=True)
        params = [f"{k}={v}" for k, v in (base.hydra.sweeper.get("params") or {}).items()]
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        overrides = parser.parse_overrides(params + args)
    discrete = []
    for o in overrides:
        if o.is_sweep_override() and not o.is_discrete_sweep():  # interval(a, b): its low end
            discrete.append(parser.parse_override(f"{o.get_key_element()}={o.value().start}"))
        else:
            discrete.append(o)
    return BasicSweeper.split_arguments(discrete, None)[0]


def run_plan(conf_dir: str, args: list[str], multirun: bool, history: Path = Path("outputs")) -> list[dict]:
    """Print the cost plan of every job; nothing is loaded but the tasks' data."""
    from hydra.core.global_hydra import GlobalHydra

    # piped or captured, the table keeps its rows on one line each (a terminal wraps it to fit)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    runs = earlier_runs(history)
    jobs, tasks = [], {}
    sweeper = None
    for overrides in sweep_jobs(conf_dir, args, multirun):
        GlobalHydra.instance().clear()
        with initialize_config_dir(conf_dir, version_base="1.3", job_name="plan"):
            full = compose("train", overrides=list(overrides), return_hydra_config=multirun)
        sweeper = full.hydra.sweeper if multirun else None
        cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]) if multirun else full
        key = (OmegaConf.to_yaml(cfg.task), cfg.seed)
        if key not in tasks:
            tasks[key] = load_task(cfg.task, cfg.seed, cfg.cache_dir)
        calls = plan_calls(cfg, tasks[key])
        seconds, basis = estimate_seconds(cfg, calls, runs)
        cost = project(cfg, tasks[key], calls, trainer_class(cfg))
        jobs.append({"overrides": list(overrides), **calls, "seconds": seconds, "basis": basis, "cost": cost})
    values: dict[str, set] = {}
    for j in jobs:
        for o in j["overrides"]:
            values.setdefault(o.split("=", 1)[0], set()).add(o)
    for j in jobs:  # a job is named by what differs between the jobs
        j["job"] = " ".join(o for o in j["overrides"] if len(values[o.split("=", 1)[0]]) > 1) or "the run"
    trials = sweeper.get("n_trials") if sweeper is not None and "optuna" in str(sweeper.get("_target_", "")) else None
    table = Table(title="cost plan: target calls (prompt x example scorings), tokens (at most), money and estimated wall time")
    for col in ("job", "training", "final eval (≤)", "total (≤)", "target tokens in/out", "agent tokens in/out", "USD",
                "est. time"):
        table.add_column(col, justify="left" if col == "job" else "right")
    approx = lambda c: "" if c["exact_tokens"] else "≈"
    for i, j in enumerate(jobs):
        training = str(j["train"]) + (" (budget)" if j["train"] != j["schedule"] else "")
        c = j["cost"]
        table.add_row(f"{i}: {j['job']}", training, str(j["final"]), str(j["train"] + j["final"]),
                      f"{approx(c)}{tokens(c['target_input_tokens'])} / {tokens(c['target_output_tokens'])}",
                      f"{approx(c)}{tokens(c['agent_input_tokens'])} / {tokens(c['agent_output_tokens'])}",
                      usd(c["usd"]), duration(j["seconds"]))
    count = trials or len(jobs)
    total_calls = (max(j["train"] + j["final"] for j in jobs) * trials) if trials else sum(j["train"] + j["final"] for j in jobs)
    known = [j["seconds"] for j in jobs if j["seconds"] is not None]
    total_s = (max(known) * trials if trials else sum(known)) if known else None
    total_time = duration(total_s) if len(known) == len(jobs) else f">= {duration(total_s)} ({len(known)} of {len(jobs)} timed)"
    money = [j["cost"]["usd"] for j in jobs]
    total_usd = None if None in money else (max(money) * trials if trials else sum(money))
    table.add_row(f"total ({count} {'trials, at most' if trials else 'job' if count == 1 else 'jobs'})", "", "", str(total_calls),
                  "", "", usd(total_usd), total_time if known else "?", end_section=True)
    console.print(table)
    if trials:
        console.print(f"  hydra/sweeper=optuna: {trials} trials drawn from this search space; "
                      "the rows are its discrete grid, continuous parameters at their low end")
    console.print("  tokens: each call's input is a real example's with an instruction of agent.max_new_tokens tokens, "
                  "each sampled instruction that long (upper bounds); ≈: no tokenizer on this machine, 4 characters "
                  "a token (set target.chat.tokenizer / agent.chat.tokenizer); USD: at the chat endpoints' prices, "
                  "- where a model the run pays for has none or all are local")
    if known:
        console.print(f"  est. time: median seconds per target call of earlier runs under {history}/ with the same "
                      "target, backend, agent and algo (training) and the same target (final evaluation)")
    else:
        console.print(f"  est. time: no earlier run under {history}/ with the same target, agent and algo to time it by")
    return jobs


def run_check(cfg) -> dict:
    """Print the check; raises UserError (one line) for bad data or settings."""
    from promptrl.engines import check_agent_backend

    try:
        uses_agent = get_class(cfg.algo._target_).needs_agent
    except (ImportError, AttributeError):
        uses_agent = False  # `plan` below names an unimportable algo
    if uses_agent:  # the refusals `train` would stop with (e.g. RL with a hosted agent), where train checks them
        check_agent_backend(cfg, needs_agent=False)
    console = Console(soft_wrap=True)  # lines stay whole when piped or captured; tables still fit the width
    task = load_task(cfg.task, cfg.seed, cfg.cache_dir)
    console.print(f"[bold]data[/bold]: {task.source}")
    for line in task.data_report:
        console.print(f"  {line}")
    console.print(class_balance(task))
    if cfg.target.backend == "chat":  # a hosted model: no tokenizer here, and no request is sent
        for note in chat_label_notes(cfg.target, task):
            console.print(f"  {note}")
    elif not task.is_generation:
        table, notes = label_table(task, load_tokenizer(cfg.target, cfg.cache_dir), cfg.target.name)
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
