"""`promptrl train | eval | predict | check | report | cache`: thin Hydra entry points.

Each subcommand is its own Hydra app (config `conf/<command>.yaml`), so overrides, `--cfg job`,
`--help` and `-m` multirun behave exactly as Hydra users expect. `check` composes train's config
without starting a job (it writes nothing); `report` and `cache` are plain argparse.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.interrupts import Interrupted
from promptrl.preflight import preflight
from promptrl.rundir import secret_on_command_line


def _conf_dir() -> str:
    """The config tree: conf/ beside the package in a source checkout (editable installs, so
    edits take effect at once), else the copy the wheel ships as promptrl/conf."""
    package = Path(__file__).resolve().parent
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"promptrl: no config tree beside {package} nor inside it (a broken install?)")


CONF_DIR = _conf_dir()
USAGE = """usage: promptrl {train,eval,predict,check,report,cache} [hydra overrides ...]

  train   find a prompt: promptrl train task=sst2 agent=smollm2-135m algo=appo
  eval    score a prompt: promptrl eval task=sst2 prompt="Is this review positive?"
  predict use a prompt:  promptrl predict task=custom ... prompt_file=best_prompt.txt input_file=new.csv
  check   data and plan: promptrl check task=custom task.data_files.train=my.csv task.label_field=category
  --plan  cost first:    promptrl train -m experiment=compare_sst2 --plan   (calls and time per job, no model)
  report  compare runs:   promptrl report outputs/multirun/<date>/<time>
  cache   score cache:    promptrl cache merge [CACHE_DIR]   (compact its shards, import an old scores.sqlite)

Each command is a Hydra app: `promptrl train --help`, `--cfg job`, `-m` for sweeps."""

register_configs()


FAILED_JOBS: list[str] = []  # run directories of sweep jobs that failed, for the final summary


def _report_errors(fn, cfg: DictConfig):
    """User mistakes end a run with one line on stderr and exit code 2, not a traceback
    (HYDRA_FULL_ERROR=1 or --verbose shows it anyway). In a sweep, a failing job of any kind is
    recorded in its directory (failed.json) and the sweep goes on; `main` reports the failures."""
    route_transformers_logs()
    try:
        return fn(cfg)
    except Interrupted as e:  # not a failure: the job resumes when launched again; a sweep stops here too
        print(f"promptrl: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except Exception as e:
        if not _in_sweep():
            if not isinstance(e, UserError) or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"promptrl: error: {e}", file=sys.stderr)
            sys.exit(2)
        _record_failed_job(e)


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failed_job(e: Exception) -> None:
    import traceback

    from promptrl.rundir import run_dir, write_json

    out = run_dir()
    message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    write_json(out / "failed.json", {"error": message, "type": type(e).__name__, "traceback": traceback.format_exc()})
    logging.getLogger("promptrl").error("job failed (%s); recorded in %s; the sweep goes on", message.splitlines()[0], out)
    FAILED_JOBS.append(f"{out}: {message.splitlines()[0] if message else type(e).__name__}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig):
    from promptrl.train import run_train

    results = _report_errors(run_train, cfg)
    metric = cfg.get("optimized_metric")
    if metric and isinstance(results, dict):  # the sweeper's objective (hydra/sweeper=optuna); a failed job returns None
        if metric not in results:
            raise UserError(f"optimized_metric={metric!r} is not in results.json; expected a key such as dev_accuracy")
        return results[metric]
    return results


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_app(cfg: DictConfig):
    from promptrl.evaluate import run_eval

    return _report_errors(run_eval, cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def predict_app(cfg: DictConfig):
    from promptrl.predict import run_predict

    return _report_errors(run_predict, cfg)


def check_main(args: list[str]) -> int:
    """`promptrl check <train overrides>`: no Hydra job, no run directory, no model."""
    import datasets
    from hydra import compose, initialize_config_dir

    from promptrl.check import run_check

    # Library records and bars (datasets, transformers) have no console here; promptrl prints its own.
    datasets.disable_progress_bars()
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger("promptrl").addHandler(logging.NullHandler())
    route_transformers_logs()
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="check"):
            cfg = compose("train", overrides=args)
        run_check(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"promptrl: error: {e}", file=sys.stderr)
        return 2
    return 0


def plan_main(args: list[str]) -> int:
    """`promptrl train [-m] <overrides> --plan`: the cost plan of the run or of every sweep job,
    composed without loading a model (only the tasks' data, for their split sizes)."""
    import datasets

    from promptrl.check import run_plan

    datasets.disable_progress_bars()
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger("promptrl").addHandler(logging.NullHandler())
    multirun = any(a in ("-m", "--multirun") for a in args)
    try:
        run_plan(CONF_DIR, [a for a in args if a not in ("-m", "--multirun")], multirun)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"promptrl: error: {e}", file=sys.stderr)
        return 2
    return 0


def report_main(args: list[str]) -> int:
    from promptrl import progress
    from promptrl.report import main as report

    # report has no logger.progress: its bars (runs read, figures drawn) are drawn on a terminal
    # only, so a report piped or redirected to a file holds its tables and nothing else
    before = progress.enabled()
    progress.set_enabled(sys.stdout.isatty())
    try:
        return report(args)
    except UserError as e:
        print(f"promptrl: error: {e}", file=sys.stderr)
        return 2
    finally:
        progress.set_enabled(before)


def cache_main(args: list[str]) -> int:
    """`promptrl cache merge [CACHE_DIR] [--min-age S]`: compact the prompt-score cache's shards."""
    import argparse

    from promptrl.scoring.cache import merge

    parser = argparse.ArgumentParser(prog="promptrl cache", description="Maintain the prompt-score cache.")
    sub = parser.add_subparsers(dest="action", required=True)
    m = sub.add_parser("merge", help="compact <cache_dir>/scores/ into one shard; import an old scores.sqlite")
    m.add_argument("cache_dir", nargs="?", default=os.environ.get("PROMPTRL_CACHE", "~/.cache/promptrl"),
                   help="the runs' cache_dir (default: $PROMPTRL_CACHE or ~/.cache/promptrl)")
    m.add_argument("--min-age", type=float, default=60.0, metavar="SECONDS",
                   help="leave alone shards written in the last SECONDS (default 60); shards whose writer "
                        "still runs on this host are always left alone")
    ns = parser.parse_args(args)
    root = Path(ns.cache_dir).expanduser()
    if not root.is_dir():
        print(f"promptrl: error: cache directory {str(root)!r} does not exist; expected a runs' cache_dir", file=sys.stderr)
        return 2
    if ns.min_age < 0:
        print(f"promptrl: error: --min-age {ns.min_age}; expected seconds >= 0", file=sys.stderr)
        return 2
    print(merge(root, min_age_s=ns.min_age).line())
    return 0


COMMANDS = {"train": train_app, "eval": eval_app, "predict": predict_app}
COMMAND_NAMES = ("train", "eval", "predict", "check", "report", "cache")


def resume_in_its_own_directory(command: str, args: list[str]) -> list[str]:
    """`resume=<dir>` (or `latest`) continues a run in that directory: Hydra is pointed at it, so
    the resumed session's log appends to the run's own train.log and its `.hydra/` record goes to
    `.hydra/resume-<time>/` there, instead of a new directory that only says "resumed"."""
    if command not in ("train", "predict") or any(a in ("-m", "--multirun") for a in args):
        return args
    given = [a.split("=", 1)[1] for a in args if a.startswith("resume=")]
    if not given or given[-1] in ("", "null") or any(a.startswith(("hydra.run.dir=", "hydra.output_subdir=")) for a in args):
        return args
    from promptrl.rundir import resolve_resume

    target = resolve_resume(given[-1]) if command == "train" else Path(given[-1]).expanduser()
    if command == "predict":
        from promptrl.predict import find_predict_run

        target = find_predict_run(given[-1])
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    resolved = str(target.resolve())
    # Hydra's override grammar: quote the path (it may hold = , or spaces)
    return [f"resume='{resolved}'" if a.startswith("resume=") else a for a in args] + [
        f"hydra.run.dir='{resolved}'", f"hydra.output_subdir=.hydra/resume-{stamp}"]


def _quiet_libraries() -> None:
    """Library chatter goes to the run's log file, not the console (the handlers are in
    conf/hydra/job_logging/promptrl.yaml): Python warnings (deprecations) become log records,
    per-load progress bars of transformers and datasets are off, and vLLM logs through the root
    logger instead of its own console handler. Each variable can still be set to override."""
    logging.captureWarnings(True)
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")


def route_transformers_logs() -> None:
    """transformers logs through a stderr handler of its own; in a job its records go to the
    job's handlers instead (for a library logger: the run's log file)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def main() -> None:
    _quiet_libraries()
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "report":
        sys.exit(report_main(rest))
    if command == "cache":
        sys.exit(cache_main(rest))
    if command not in COMMAND_NAMES:
        print(f"promptrl: error: unknown command {command!r}; expected one of: {', '.join(COMMAND_NAMES)}", file=sys.stderr)
        sys.exit(2)
    if "--verbose" in rest:  # full tracebacks for user errors too
        rest.remove("--verbose")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    planning = command == "train" and "--plan" in rest  # the cost plan instead of the run
    if planning:
        rest.remove("--plan")
    problem = secret_on_command_line(rest) or preflight(CONF_DIR, "train" if command == "check" else command, rest)
    if problem is not None:
        print(f"promptrl: error: {problem}", file=sys.stderr)
        sys.exit(2)
    # Hydra reads sys.argv; the job name (and log file) follows the subcommand.
    if command == "check":
        sys.exit(check_main(rest))
    if planning:
        sys.exit(plan_main(rest))
    try:
        rest = resume_in_its_own_directory(command, rest)
    except UserError as e:
        print(f"promptrl: error: {e}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [command] + rest
    COMMANDS[command]()
    if FAILED_JOBS:
        print(f"promptrl: error: {len(FAILED_JOBS)} sweep job(s) failed:\n  " + "\n  ".join(FAILED_JOBS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
