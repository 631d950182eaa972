"""`promptrl train | eval | report`: thin Hydra entry points.

Each subcommand is its own Hydra app (config `conf/<command>.yaml`), so overrides, `--cfg job`,
`--help` and `-m` multirun behave exactly as Hydra users expect.
"""

from __future__ import annotations

import os
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


def _report_errors(fn, cfg: DictConfig):
    """User mistakes end the run with one line on stderr and exit code 2, not a traceback.
    Set HYDRA_FULL_ERROR=1 to see the traceback anyway."""
    try:
        return fn(cfg)
    except UserError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"promptrl: error: {e}", file=sys.stderr)
        sys.exit(2)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def train_app(cfg: DictConfig):
    from promptrl.train import run_train

    return _report_errors(run_train, cfg)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def eval_app(cfg: DictConfig):
    from promptrl.evaluate import run_eval

    return _report_errors(run_eval, cfg)


def report_main(args: list[str]) -> int:
    print("promptrl report: not yet implemented (see the experiments-at-scale issue)", file=sys.stderr)
    return 1


COMMANDS = {"train": train_app, "eval": eval_app}


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
    # Hydra reads sys.argv; the job name (and log file) follows the subcommand.
    sys.argv = [command] + rest
    COMMANDS[command]()


if __name__ == "__main__":
    main()
