"""`promptrl report`: compare finished runs — means with 95% intervals over seeds, paired
comparisons of methods and against the manual or empty prompt, CSV/Markdown, plots.

A run is any directory with a `results.json` (and, for plots, `metrics.jsonl`); `failed.json`
marks a sweep job that failed. Runs are grouped by config keys (default `task.name algo.name`),
read from each run's `config_resolved.yaml`, else from the job's Hydra overrides
(`.hydra/overrides.yaml`), so a group chosen on the command line (`+arm=appo`) groups too.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from omegaconf import OmegaConf

from promptrl import progress
from promptrl.errors import UserError
from promptrl.stats import paired_comparison, t_interval

DEFAULT_BY = ["task.name", "algo.name"]
METRICS = [  # (results.json key, column title, scale)
    ("test_accuracy", "test acc", 1.0),  # of the dev-selected prompt
    ("guard_test_accuracy", "guard acc", 1.0),  # the baseline kept unless the prompt is significantly better on dev
    ("paper_test_accuracy", "paper acc", 1.0),  # max over the queue on test (the paper's protocol)
    ("manual_test_accuracy", "manual acc", 1.0),
    ("empty_test_accuracy", "empty acc", 1.0),
    ("target_calls", "calls", 1.0),
    ("wall_time_s", "wall min", 1 / 60),
]


@dataclass
class Run:
    path: Path
    config: dict
    results: dict | None  # None: the job failed
    rows: list[dict] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)  # the job's Hydra overrides, `+`/`++` stripped

    @cached_property
    def _conf(self):  # built once: OmegaConf.create of a resolved config takes ~25 ms
        return OmegaConf.create(self.config)

    def value(self, key: str):
        found = OmegaConf.select(self._conf, key, default=None)
        return self.overrides.get(key) if found is None else found

    def key(self, by: list[str]) -> tuple:
        return tuple(str(self.value(k)) for k in by)


def find_runs(patterns: list[str]) -> list[Run]:
    dirs: set[Path] = set()
    for pattern in patterns:
        matches = [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]
        for m in matches:
            if not m.exists():
                raise UserError(f"report: {pattern!r} matches no file or directory; expected run or sweep directories")
            for marker in ("results.json", "failed.json"):
                dirs.update(p.parent for p in ([m] if m.name == marker else m.rglob(marker)))
    if not dirs:
        raise UserError(f"report: no runs (results.json or failed.json) under {', '.join(patterns)}")
    runs = []
    with progress.bar("report: reading runs", total=len(dirs)) as bar:
        for d in sorted(dirs):
            runs.append(load_run(d))
            bar.advance()
    return runs


def unfinished_runs(patterns: list[str]) -> list[Path]:
    """Run directories under `patterns` (a saved config, or a Hydra job's `.hydra/`) with neither
    results.json nor failed.json: running, or killed. Named in the report, never silently left out."""
    found: set[Path] = set()
    for pattern in patterns:
        for m in [Path(p) for p in glob.glob(pattern)] or [Path(pattern)]:
            if m.is_dir():
                found.update(p.parent for p in m.rglob("config_resolved.yaml"))
                found.update(p.parent.parent for p in m.rglob(".hydra/config.yaml"))
    return sorted(d for d in found if not (d / "results.json").is_file() and not (d / "failed.json").is_file())


def load_run(d: Path) -> Run:
    cfg_path = d / "config_resolved.yaml"
    config = OmegaConf.to_container(OmegaConf.load(cfg_path)) if cfg_path.is_file() else {}
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").is_file() else None
    rows = []
    if (d / "metrics.jsonl").is_file():
        for line in (d / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
    overrides = {}
    if (d / ".hydra" / "overrides.yaml").is_file():
        for item in OmegaConf.load(d / ".hydra" / "overrides.yaml") or []:
            name, sep, val = str(item).partition("=")
            if sep and not name.startswith("~"):
                overrides[name.lstrip("+")] = val
    return Run(d, config, results, with_samples(with_training_minutes(rows)), overrides)


def with_training_minutes(rows: list[dict]) -> list[dict]:
    """Each row gets `train_minutes`: the seconds of the steps and dev checks logged up to it
    (`time_step` + `time_check`), in minutes. Unlike `wall_time_s` it leaves out model loading
    and the time between a killed session and its resume, so runs resumed over several sessions
    line up with runs that ran at once. (Rows written before `time_check` existed leave out
    APPO's dev checks, a few seconds each.)"""
    seconds = 0.0
    for row in rows:
        seconds += sum(float(row[k]) for k in ("time_step", "time_check") if _finite(row.get(k)))
        row["train_minutes"] = seconds / 60
    return rows


def with_samples(rows: list[dict]) -> list[dict]:
    """Each row that drew instructions from the agent gets `samples`: the instructions drawn up to
    and including it. Curves over steps misalign arms that draw different numbers a step (APPO 4,
    GRPO 2 groups of 4); over samples they line up at equal budgets. Anchor checks and APE's UCB
    rounds score instructions drawn earlier: no `samples` there."""
    drawn = 0
    for row in rows:
        if "anchor" not in row and row.get("phase") != "ucb" and isinstance(row.get("prompts"), list):
            drawn += len(row["prompts"])
            row["samples"] = drawn
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(runs: list[Run], by: list[str]) -> list[dict]:
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault(r.key(by), []).append(r)
    table = []
    for key in sorted(groups):
        members = groups[key]
        done = [r.results for r in members if r.results is not None]
        row = {**dict(zip(by, key)), "runs": len(done), "failed": len(members) - len(done),
               "seeds": " ".join(str(r.get("seed")) for r in done)}
        for name, _, scale in METRICS:
            vals = [float(r[name]) * scale for r in done if r.get(name) is not None]
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(vals)
            _, row[f"{name}_ci_low"], row[f"{name}_ci_high"] = t_interval(vals)
        table.append(row)
    return table


def fmt(row: dict, name: str) -> str:
    """Accuracies as `mean [95% t-interval]` (the interval needs two seeds); cost as mean."""
    mean = row[f"{name}_mean"]
    if math.isnan(mean):
        return "-"
    if name == "target_calls":
        return f"{mean:.0f}"
    if name == "wall_time_s":
        return f"{mean:.1f}"
    lo, hi = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    return f"{mean:.3f}" if math.isnan(lo) else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def table_cells(table: list[dict], by: list[str]) -> tuple[list[str], list[list[str]]]:
    shown = [(n, t) for n, t, _ in METRICS if any(not math.isnan(row[f"{n}_mean"]) for row in table)]
    header = [k.split(".")[0] if k.endswith(".name") else k for k in by] + ["runs", "failed"] + [t for _, t in shown]
    cells = [[str(row[k]) for k in by] + [str(row["runs"]), str(row["failed"])]
             + [fmt(row, n) for n, _ in shown] for row in table]
    return header, cells


def markdown(header: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


COMPARED = ["test_accuracy", "guard_test_accuracy", "paper_test_accuracy"]


def compare(runs: list[Run], by: list[str], spec: str) -> list[dict]:
    """`KEY=A,B`: A - B on each accuracy over the seeds both have, within each group of the other
    `--by` keys (e.g. per task). A seed that only one side has is left out and counted."""
    key, sep, values = spec.partition("=")
    sides = [v.strip() for v in values.split(",")]
    if not sep or len(sides) != 2 or not all(sides) or not key.strip():
        raise UserError(f"report: --compare {spec!r} must be KEY=A,B (e.g. algo.name=appo,ppo or arm=appo,ape)")
    if sides[0] == sides[1]:
        raise UserError(f"report: --compare {spec!r} compares {sides[0]!r} with itself; name two different values of {key.strip()}")
    key = key.strip()
    rest = [k for k in by if k != key]
    found = {str(r.value(key)) for r in runs}
    missing = [s for s in sides if s not in found]
    if missing:
        raise UserError(f"report: --compare {key}={missing[0]!r} matches no run; {key} takes {sorted(found)}")
    cells: dict[tuple, dict[str, dict]] = {}
    where: dict[tuple, Path] = {}  # (group, side, seed) -> the run: a second run of one seed is refused, not overwritten
    for r in runs:
        side = str(r.value(key))
        if r.results is not None and side in sides:
            seed = str(r.value("seed"))
            if (r.key(rest), side, seed) in where:
                raise UserError(f"report: --compare {spec!r}: {key}={side} has two runs of seed {seed}"
                                f"{' in ' + ', '.join(f'{k}={v}' for k, v in zip(rest, r.key(rest))) if rest else ''}: "
                                f"{where[r.key(rest), side, seed]} and {r.path}; pass each run once, or add the key that "
                                "tells them apart to --by")
            where[r.key(rest), side, seed] = r.path
            cells.setdefault(r.key(rest), {}).setdefault(side, {})[seed] = r.results
    out = []
    for group in sorted(cells):
        a, b = cells[group].get(sides[0], {}), cells[group].get(sides[1], {})
        seeds = sorted(set(a) & set(b), key=lambda s: (len(s), s))
        for name in COMPARED:
            pairs = [(a[s][name], b[s][name]) for s in seeds if a[s].get(name) is not None and b[s].get(name) is not None]
            if not pairs:
                continue
            c = paired_comparison([float(x) for x, _ in pairs], [float(y) for _, y in pairs])
            out.append({**dict(zip(rest, group)), "metric": name, "a": f"{key}={sides[0]}", "b": f"{key}={sides[1]}",
                        "a_mean": statistics.fmean(x for x, _ in pairs), "b_mean": statistics.fmean(y for _, y in pairs),
                        "unpaired": len(set(a) ^ set(b)), **vars(c)})
    return out


BASELINES = ("manual", "empty")


def compare_to_baseline(runs: list[Run], by: list[str], baseline: str) -> list[dict]:
    """Each group's dev-selected prompt against the baseline prompt scored in the same runs
    (`<baseline>_test_accuracy`), paired by run: does the search beat the prompt a user already
    has? A template change (e.g. the study's natural template) changes the baseline, so each run
    is paired with its own."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r.results is not None:
            groups.setdefault(r.key(by), []).append(r.results)
    out = []
    for group in sorted(groups):
        pairs = [(float(res["test_accuracy"]), float(res[f"{baseline}_test_accuracy"])) for res in groups[group]
                 if res.get("test_accuracy") is not None and res.get(f"{baseline}_test_accuracy") is not None]
        if not pairs:
            continue
        c = paired_comparison([x for x, _ in pairs], [y for _, y in pairs])
        out.append({**dict(zip(by, group)), "metric": "test_accuracy", "a": "selected", "b": f"{baseline} prompt",
                    "a_mean": statistics.fmean(x for x, _ in pairs), "b_mean": statistics.fmean(y for _, y in pairs),
                    "unpaired": len(groups[group]) - len(pairs), **vars(c)})
    return out


class Comparison(NamedTuple):
    rows: list[dict]  # from compare() or compare_to_baseline()
    keys: list[str]  # the group columns of its rows
    title: str


def write_comparisons(comparisons: list[Comparison], out: Path, name: str) -> list[Path]:
    """<name>.csv (every row; group columns first) and <name>.md (a titled table each); each
    table also printed."""
    from promptrl.tracking import print_table

    keys = [k for c in comparisons for k in c.keys]
    fields = list(dict.fromkeys(keys + [k for c in comparisons for k in c.rows[0]]))
    with (out / f"{name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        for c in comparisons:
            writer.writerows(c.rows)
    parts = []
    for c in comparisons:
        header, cells = compare_cells(c.rows, c.keys)
        parts.append(f"### {c.title}\n\n" + markdown(header, cells))
        print_table(c.title, header, cells)
    (out / f"{name}.md").write_text("\n".join(parts))
    return [out / f"{name}.csv", out / f"{name}.md"]


def compare_cells(rows: list[dict], rest: list[str]) -> tuple[list[str], list[list[str]]]:
    a, b = (rows[0]["a"], rows[0]["b"]) if rows else ("a", "b")  # one comparison per table: name its sides
    header = rest + ["metric", "pairs", a, b, f"{a} - {b} [95% t]", "wins/ties/losses", "paired t p", "Wilcoxon p", "sign p"]
    p = lambda v: "n/a" if math.isnan(v) else ("<0.001" if v < 0.001 else f"{v:.3f}")  # n/a: no p-value (stats.py)
    cells = [[str(r[k]) for k in rest] + [r["metric"], str(r["n"]), f"{r['a_mean']:.3f}", f"{r['b_mean']:.3f}",
             f"{r['mean_diff']:+.3f}" + ("" if math.isnan(r["ci_low"]) else f" [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"),
             f"{r['wins']}/{r['ties']}/{r['losses']}", p(r["t_p"]), p(r["wilcoxon_p"]), p(r["sign_p"])] for r in rows]
    return header, cells


def write_outputs(table: list[dict], by: list[str], out: Path, notes: list[str] = ()) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "report.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    (out / "report.md").write_text(markdown(*table_cells(table, by)) + "".join(f"\n{note}\n" for note in notes))


def curve(runs: list[Run], x_key: str, y_key: str, smooth: int = 1):
    """Mean, min and max over runs of y at each x (step rows only), over the runs with a row at
    that x. smooth > 1 replaces each run's y by its trailing mean over that many rows first, so
    the band shows the spread between seeds rather than the noise of single steps (4 prompts a
    step). Best-so-far curves against target calls, where runs' rows fall at different x, use
    `best_so_far`."""
    series = []
    for r in runs:
        points = sorted((float(row[x_key]), float(row[y_key])) for row in r.rows
                        if "anchor" not in row and row.get(y_key) is not None and row.get(x_key) is not None)
        if smooth > 1:
            ys = [y for _, y in points]
            points = [(x, statistics.fmean(ys[max(0, i - smooth + 1):i + 1])) for i, (x, _) in enumerate(points)]
        if points:
            series.append(points)
    per_x: dict[float, list[float]] = {}
    for points in series:
        for x, y in dict(points).items():
            per_x.setdefault(x, []).append(y)
    xs = sorted(per_x)
    return xs, [statistics.fmean(per_x[x]) for x in xs], [min(per_x[x]) for x in xs], [max(per_x[x]) for x in xs]


def best_so_far(runs: list[Run], x_key: str = "target_calls", y_key: str = "best_reward"):
    """Mean, min and max over runs of each run's best y so far, at every x where a run has a row.

    Each run is the running maximum of its y (a UCB round can lower APE's logged best, a best so
    far cannot fall), held from its first row to the end of the longest run: a run that stopped
    at fewer target calls keeps its best rather than dropping out of the mean (which made the mean
    fall where a good run ended). The curve starts where every run has its first row, since a mean
    over the runs that have started so far would move as runs join. So the mean never decreases."""
    series = []
    for r in runs:
        points = sorted((float(row[x_key]), float(row[y_key])) for row in r.rows
                        if "anchor" not in row and _finite(row.get(x_key)) and _finite(row.get(y_key)))
        running, best = [], -math.inf
        for x, y in points:
            best = max(best, y)
            running.append((x, best))
        if running:
            series.append(running)
    if not series:
        return [], [], [], []
    start = max(points[0][0] for points in series)
    xs = sorted({x for points in series for x, _ in points if x >= start})
    per_x: dict[float, list[float]] = {x: [] for x in xs}
    for points in series:
        i, value = 0, None
        for x in xs:  # a step function: the last row at or before x (rows at one x: the running max is their max)
            while i < len(points) and points[i][0] <= x:
                value = points[i][1]
                i += 1
            per_x[x].append(value)
    return xs, [statistics.fmean(per_x[x]) for x in xs], [min(per_x[x]) for x in xs], [max(per_x[x]) for x in xs]


# The ledger's cumulative units (promptrl/ledger.py), each a key of every metrics row
COST_UNITS = ("target_calls", "target_input_tokens", "target_output_tokens", "agent_input_tokens", "agent_output_tokens",
              "agent_train_forward_tokens", "agent_train_backward_tokens", "usd", "time_spent_generate",
              "time_spent_score", "time_spent_update")


def run_spend(run: Run, unit: str) -> list[tuple[float, float]]:
    """(spend in `unit`, best reward so far) at each step row, in order of spend."""
    points = sorted((float(row[unit]), float(row["best_reward"])) for row in run.rows
                    if "anchor" not in row and _finite(row.get(unit)) and _finite(row.get("best_reward")))
    out, best = [], -math.inf
    for x, y in points:
        best = max(best, y)
        out.append((x, best))
    return out


def at_equal_cost(runs: list[Run], by: list[str], unit: str) -> tuple[float, list[dict]]:
    """Every group's best reward so far at one spend: the most that every run reached in `unit`
    (the smallest of the runs' final spends), so no method is credited with budget it did not
    use or charged with budget it did not get. Mean [95% t-interval] over the runs of a group."""
    series = {id(r): run_spend(r, unit) for r in runs}
    spent = [s[-1][0] for s in series.values() if s]
    if not spent:
        raise UserError(f"report: --cost {unit}: no run logs {unit!r} in its metrics rows (runs from before the cost "
                        f"ledger, or an algorithm without it); expected one of {', '.join(COST_UNITS)}")
    level = min(spent)
    groups: dict[tuple, list[float]] = {}
    totals: dict[tuple, list[float]] = {}
    for r in runs:
        s = series[id(r)]
        if not s:
            continue
        below = [y for x, y in s if x <= level]
        groups.setdefault(r.key(by), []).append(below[-1] if below else math.nan)
        totals.setdefault(r.key(by), []).append(s[-1][0])
    rows = []
    for key in sorted(groups):
        values = [v for v in groups[key] if not math.isnan(v)]
        mean, lo, hi = t_interval(values) if values else (math.nan, math.nan, math.nan)
        rows.append({**dict(zip(by, key)), "runs": len(groups[key]), "best_reward_mean": mean, "best_reward_ci_low": lo,
                     "best_reward_ci_high": hi, "not_started": len(groups[key]) - len(values),
                     f"final_{unit}_mean": statistics.fmean(totals[key])})
    return level, rows


def write_equal_cost(runs: list[Run], by: list[str], unit: str, out: Path) -> Path:
    level, rows = at_equal_cost(runs, by, unit)
    header = [k.split(".")[0] if k.endswith(".name") else k for k in by] + [
        "runs", f"best reward at {unit} = {level:g}", f"{unit} at the end (mean)"]
    interval = lambda r: ("-" if math.isnan(r["best_reward_mean"]) else f"{r['best_reward_mean']:.3f}" + (
        "" if math.isnan(r["best_reward_ci_low"]) else f" [{r['best_reward_ci_low']:.3f}, {r['best_reward_ci_high']:.3f}]"))
    cells = [[str(r[k]) for k in by] + [str(r["runs"]) + (f" ({r['not_started']} not started)" if r["not_started"] else ""),
                                        interval(r), f"{r[f'final_{unit}_mean']:g}"] for r in rows]
    path = out / f"equal_cost_{unit}.md"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(f"Best reward so far (training's reward, on train) of each group at the same spend: {level:g} {unit}, "
                    "the most every run reached; mean [95% t-interval] over runs.\n\n" + markdown(header, cells))
    from promptrl.tracking import print_table

    print_table(f"at equal cost: best reward so far at {level:g} {unit}", header, cells)
    return path


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def searched(run: Run) -> bool:
    """A run with a search to draw: per-step rewards (the manual prompt and eval runs have none;
    GEPA logs only reward_max)."""
    return any("reward_mean" in row or "reward_max" in row for row in run.rows)


def plot(runs: list[Run], by: list[str], out: Path, smooth: int = 1) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Run]] = {}
    for r in runs:
        if searched(r):  # the manual prompt has no search to draw
            groups.setdefault(" / ".join(r.key(by)), []).append(r)
    written = []
    figures = [("reward_mean", "samples", "mean reward of the step's prompts", "reward.png"),
               ("best_reward", "target_calls", "best reward so far", "best_reward_vs_calls.png"),
               ("best_reward", "train_minutes", "best reward so far", "best_reward_vs_time.png"),
               ("response_len", "samples", "mean response length (tokens)", "response_len.png"),
               ("entropy", "samples", "policy entropy (nats/token)", "entropy.png")]
    with progress.bar("report: drawing plots", total=len(figures) + 1) as bar:
        for y_key, x_key, title, fname in figures:
            if any(row.get(y_key) is not None and row.get(x_key) is not None and (x_key != "train_minutes" or row[x_key] > 0)
                   for members in groups.values() for r in members for row in r.rows):
                written.append(_plot_curve(groups, y_key, x_key, title, out / fname, smooth, plt))
            # else: APE and OPRO have no policy, so no response-length or entropy rows
            bar.advance()
        written.append(plot_dev(groups, out, plt))
        bar.advance()
    return written


def plot_best_against(runs: list[Run], by: list[str], unit: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[Run]] = {}
    for r in runs:
        if searched(r):
            groups.setdefault(" / ".join(r.key(by)), []).append(r)
    return _plot_curve(groups, "best_reward", unit, f"best reward so far against {unit}", out / f"best_reward_vs_{unit}.png", 1, plt)


def _plot_curve(groups: dict[str, list[Run]], y_key: str, x_key: str, title: str, path: Path, smooth: int, plt) -> Path:
    """One PNG: each group's mean curve with its min..max band over seeds."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, (label, members) in enumerate(groups.items()):
        if y_key == "best_reward":  # each run held at its best to the end, so the mean never falls
            xs, mean, lo, hi = best_so_far(members, x_key, y_key)
        else:
            xs, mean, lo, hi = curve(members, x_key, y_key, smooth=smooth)
        if not xs:
            continue
        line, = ax.plot(xs, mean, label=f"{label} (n={len(members)})", color=f"C{i % 10}")  # one colour per group in every plot
        ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel({"train_minutes": "training minutes (steps and dev checks)",
                   "samples": "instructions sampled"}.get(x_key, x_key.replace("_", " ")))
    ax.set_ylabel(y_key.replace("_", " "))
    smoothed = f", trailing mean of {smooth} steps" if smooth > 1 and y_key != "best_reward" else ""
    ax.set_title(f"{title}{smoothed}; band = min..max over seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dev(groups: dict[str, list[Run]], out: Path, plt) -> Path:
    """Policy dev accuracy at every anchor check, mean over seeds; each check's decision marked."""
    markers = {"update": ("^", "anchor update"), "rollback": ("v", "rollback"), "keep": ("o", "keep")}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    shown = set()
    for i, (label, members) in enumerate(groups.items()):
        checks: dict[int, list[float]] = {}
        for r in members:
            for row in r.rows:
                if row.get("policy_dev_acc") is not None:
                    checks.setdefault(int(row["step"]), []).append(float(row["policy_dev_acc"]))
        if not checks:
            continue
        steps = sorted(checks)
        line, = ax.plot(steps, [statistics.fmean(checks[s]) for s in steps], label=label, color=f"C{i % 10}")
        for r in members:
            for row in r.rows:
                decision = row.get("anchor")
                if decision in markers and row.get("policy_dev_acc") is not None:
                    m, name = markers[decision]
                    ax.scatter(row["step"], row["policy_dev_acc"], marker=m, color=line.get_color(), s=40,
                               label=name if name not in shown else None, edgecolors="black", linewidths=0.5)
                    shown.add(name)
    ax.set_xlabel("step")
    ax.set_ylabel("policy dev accuracy at anchor checks")
    ax.set_title("APPO dev checks (markers: each seed's decision)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no anchor checks in these runs", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    path = out / "dev_accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def wandb_runs(path: str) -> list[Run]:
    """The same Run records from a wandb project ("entity/project"): config, summary and history."""
    import wandb

    try:
        api_runs = wandb.Api().runs(path)
    except Exception as e:
        raise UserError(f"report: cannot read wandb project {path!r} ({str(e).splitlines()[0][:200]})") from None
    runs = []
    with progress.bar(f"report: reading runs from wandb {path}") as bar:  # a spinner: the count is known only at the end
        for w in api_runs:
            summary = dict(w.summary)
            results = summary if "test_accuracy" in summary else None
            rows = [dict(r) for r in w.scan_history()]
            for row in rows:
                row.setdefault("step", row.get("_step"))
            runs.append(Run(Path(w.path if isinstance(w.path, str) else "/".join(w.path)), dict(w.config), results, rows))
            bar.advance()
    return runs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="promptrl report", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("paths", nargs="*", help="run or sweep directories, or globs of them")
    parser.add_argument("--by", default=",".join(DEFAULT_BY),
                        help="comma-separated config keys to group by (default: task.name,algo.name)")
    parser.add_argument("--out", help="where report.csv, report.md, the PNGs and report.html go (default: <first path>/report)")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from wandb instead of (or besides) disk")
    parser.add_argument("--compare", metavar="KEY=A,B", action="append",
                        help="paired comparison of two groups over the seeds they share, e.g. algo.name=appo,ppo or arm=appo,ape "
                             "(within each group of the other --by keys); repeat it for several pairs; writes compare.csv and compare.md")
    parser.add_argument("--baseline", metavar="{" + ",".join(BASELINES) + "}",
                        help="paired comparison, within each group, of the dev-selected prompt with the manual or empty "
                             "prompt scored in the same runs; writes vs_<baseline>.csv and vs_<baseline>.md")
    parser.add_argument("--smooth", type=int, default=1, metavar="N",
                        help="plot each run's per-step curves as a trailing mean over N steps (default 1: raw)")
    parser.add_argument("--cost", metavar="UNIT", action="append", choices=COST_UNITS,
                        help="also put the groups side by side at equal cost in UNIT (a ledger unit: "
                             + ", ".join(COST_UNITS) + "): a table of the best reward so far at the spend every run "
                             "reached (equal_cost_UNIT.md) and best_reward_vs_UNIT.png; repeatable")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: one self-contained interactive page (curves, every sampled prompt, "
                             "the final queues; for several runs the tables and comparisons too) that opens offline")
    args = parser.parse_args(argv)
    if not args.paths and not args.wandb:
        raise UserError("report: give run or sweep directories (e.g. outputs/multirun/<date>/<time>) or --wandb entity/project")
    if args.baseline is not None and args.baseline not in BASELINES:
        raise UserError(f"report: --baseline {args.baseline!r} is not a baseline; expected one of {', '.join(BASELINES)}")
    if args.smooth < 1:
        raise UserError(f"report: --smooth {args.smooth} must be a number of steps >= 1 (1 draws the raw curves)")
    by = [k.strip() for k in args.by.split(",") if k.strip()]
    runs = (find_runs(args.paths) if args.paths else []) + (wandb_runs(args.wandb) if args.wandb else [])
    unknown = [k for k in by if all(r.value(k) is None for r in runs)]
    if unknown:
        raise UserError(f"report: --by key(s) {unknown} are in no run's config or overrides; e.g. task.name, algo.name, seed, "
                        "algo.reference, or a group set on the command line such as arm")
    comparisons = []
    for spec in args.compare or []:
        rows = compare(runs, by, spec)
        if not rows:
            raise UserError(f"report: --compare {spec!r}: the two sides share no seed with results")
        keys = [k for k in by if k != spec.partition("=")[0].strip()]
        comparisons.append(Comparison(rows, keys, f"paired by seed: {rows[0]['a']} - {rows[0]['b']} (two-sided p-values)"))
    baseline = None
    if args.baseline:
        rows = compare_to_baseline(runs, by, args.baseline)
        if not rows:
            raise UserError(f"report: --baseline {args.baseline}: no run has both test_accuracy and {args.baseline}_test_accuracy")
        baseline = Comparison(rows, by, f"paired by run: dev-selected prompt - {args.baseline} prompt, test accuracy (two-sided p-values)")
    table = summarize(runs, by)
    out = Path(args.out) if args.out else (Path(glob.glob(args.paths[0])[0]) if args.paths else Path("report")) / "report"
    unfinished = unfinished_runs(args.paths) if args.paths else []
    notes = [f"{len(unfinished)} unfinished run(s) left out (no results.json or failed.json: running or killed): "
             + ", ".join(str(d) for d in unfinished)] if unfinished else []
    write_outputs(table, by, out, notes)
    from promptrl.tracking import print_table

    header, cells = table_cells(table, by)
    print_table(f"{len(runs)} runs grouped by {', '.join(by)} (mean [95% Student-t interval] over runs)", header, cells)
    for note in notes:
        print(note)
    written = [out / "report.csv", out / "report.md"]
    if comparisons:
        written += write_comparisons(comparisons, out, "compare")
    if baseline:
        written += write_comparisons([baseline], out, f"vs_{args.baseline}")
    if not args.no_plots and any(r.rows for r in runs):  # eval runs have no per-step rows to draw
        written += plot(runs, by, out, smooth=args.smooth)
    for unit in args.cost or []:
        written.append(write_equal_cost(runs, by, unit, out))
        if not args.no_plots:
            written.append(plot_best_against(runs, by, unit, out))
    if args.html:
        from promptrl.report_html import write_html

        written.append(write_html(runs, by, out, comparisons + ([baseline] if baseline else []), smooth=args.smooth))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
