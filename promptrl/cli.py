"""`promptrl train | eval | report`: thin Hydra entry points.

Each subcommand is its own Hydra app (config `conf/<command>.yaml`), so overrides, `--cfg job`,
`--help` and `-m` multirun behave exactly as Hydra users expect.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from promptrl.config import register_configs
from promptrl.errors import UserError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
USAGE = """usage: promptrl {train,eval,report} [hydra overrides ...]

  train   find a prompt: promptrl train task=sst2 agent=smollm2-135m algo=appo
  eval    score a prompt: promptrl eval task=sst2 prompt="Is this review positive?"
  report  compare runs:   promptrl report outputs/multirun/<date>/<time>

Each command is a Hydra app: `promptrl train --help`, `--cfg job`, `-m` for sweeps."""

register_configs()


FAILED_JOBS: list[str] = []  # run directories of sweep jobs that failed, for the final summary


def _report_errors(fn, cfg: DictConfig):
    """User mistakes end a run with one line on stderr and exit code 2, not a traceback
    (HYDRA_FULL_ERROR=1 or --verbose shows it anyway). In a sweep, a failing job of any kind is
    recorded in its directory (failed.json) and the sweep goes on; `main` reports the failures."""
    try:
        return fn(cfg)
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
    import logging
    import traceback

    from promptrl.tracking import run_dir, write_json

    out = run_dir()
    message = str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
    write_json(out / "failed.json", {"error": message, "type": type(e).__name__, "traceback": traceback.format_exc()})
    logging.getLogger("promptrl").error("job failed (%s); recorded in %s; the sweep goes on", message.splitlines()[0], out)
    FAILED_JOBS.append(f"{out}: {message.splitlines()[0] if message else type(e).__name__}")


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig):
    from promptrl.train import run_train

    return _report_errors(run_train, cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_app(cfg: DictConfig):
    from promptrl.evaluate import run_eval

    return _report_errors(run_eval, cfg)


def report_main(args: list[str]) -> int:
    from promptrl.report import main as report

    try:
        return report(args)
    except UserError as e:
        print(f"promptrl: error: {e}", file=sys.stderr)
        return 2


COMMANDS = {"train": train_app, "eval": eval_app}
CONFIG_NAMES = {"train": "train", "eval": "eval"}


def _composition_message(e: Exception, override: str) -> str:
    """One line for a Hydra composition error: the bad value and what would be accepted."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = e.__cause__
    if isinstance(e, MissingConfigException):
        missing = getattr(e, "missing_cfg_file", None) or ""
        options = ", ".join(o for o in e.options or [] if not o.endswith("_schema"))
        if "/" in missing:
            group, value = missing.rsplit("/", 1)
            return f"{group}={value!r} is not a known option; expected one of: {options}"
        return str(e).splitlines()[0]
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        key = cause.full_key or override.split("=", 1)[0]
        parent, _, name = key.rpartition(".")
        accepted = _keys_at(cause, parent)
        hint = difflib.get_close_matches(name, accepted, n=1)
        did_you_mean = f" (did you mean {parent + '.' if parent else ''}{hint[0]}?)" if hint else ""
        return f"{key!r} is not a setting{did_you_mean}; settings there: {', '.join(accepted)}"
    if isinstance(cause, ValidationError):
        return f"{cause.full_key}: {str(cause).splitlines()[0]}"
    if isinstance(e, OverrideParseException):
        return (f"cannot parse override {override!r}; quote values with spaces or special characters "
                "(see https://hydra.cc/docs/advanced/override_grammar/basic)")
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _keys_at(error, parent: str) -> list[str]:
    node = getattr(error, "parent_node", None)
    if node is None:
        node = getattr(error, "object", None)
    try:
        return sorted(str(k) for k in node.keys()) if node is not None else []
    except Exception:
        return []


def preflight(command: str, args: list[str]) -> str | None:
    """Compose the job config before Hydra runs, and turn a composition error into one line.

    Hydra's own messages are several lines long and, in a sweep, appear only when the failing
    job starts; here every swept value is composed up front, so a typo fails in a second.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra._internal.utils import get_args_parser

    try:
        ns = get_args_parser().parse_args(args)
    except SystemExit:  # argparse already printed what is wrong with the flags
        return None
    if ns.help or ns.hydra_help or ns.info or ns.shell_completion or ns.config_path or ns.config_name or ns.config_dir:
        return None  # Hydra handles these itself
    overrides = [o for o in ns.overrides if not re.match(r"^[~+]*hydra[./]", o)]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:
        bad = next((o for o in overrides if not _parses(o)), overrides[0] if overrides else "")
        return _composition_message(e, bad)
    multirun = ns.multirun
    # One composition with every sweep at its first value, then one per further swept value.
    first, variants = {}, [{}]
    for i, o in enumerate(parsed):
        if multirun and o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            first[i] = values[0]
            variants += [{i: v} for v in values[1:]]
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name=command):
        for variant in variants:
            chosen = {**first, **variant}
            job = [f"{o.get_key_element()}={chosen[i]}" if i in chosen else overrides[i] for i, o in enumerate(parsed)]
            try:
                compose(CONFIG_NAMES[command], overrides=job)
            except Exception as e:
                culprit = next((o for o in job if o.split("=", 1)[0].lstrip("+~") in str(e) or o.split("=", 1)[0].lstrip("+~") in str(e.__cause__)), "")
                return _composition_message(e, culprit)
    return None


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
        return True
    except Exception:
        return False


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "report":
        sys.exit(report_main(rest))
    if command not in COMMANDS:
        print(f"promptrl: error: unknown command {command!r}; expected one of: train, eval, report", file=sys.stderr)
        sys.exit(2)
    if "--verbose" in rest:  # full tracebacks for user errors too
        rest.remove("--verbose")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    problem = preflight(command, rest)
    if problem is not None:
        print(f"promptrl: error: {problem}", file=sys.stderr)
        sys.exit(2)
    # Hydra reads sys.argv; the job name (and log file) follows the subcommand.
    sys.argv = [command] + rest
    COMMANDS[command]()
    if FAILED_JOBS:
        print(f"promptrl: error: {len(FAILED_JOBS)} sweep job(s) failed:\n  " + "\n  ".join(FAILED_JOBS), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
