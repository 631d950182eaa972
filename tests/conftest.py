"""Shared fixtures: a tiny random Llama with a word-level tokenizer (fast unit tests) and paths
to the shared benchmark data and the embedded real model (integration tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("PROMPTRL_DATA", REPO.parent / "shared" / "data"))

WORDS = (
    "the a movie film was is great terrible good bad boring fun it this that and of to in "
    "i not very really love hate story acting plot review input output : sentiment positive "
    "negative classify instruction friend wrote every one inputs pairs here are gave an five "
    "yes no was . , ! ? \" ' is answer question task sentence label"
).split()
SPECIALS = ["<unk>", "<pad>", "<eos>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}<user> {{ m['content'] }} <eos> "
    "{% else %}<assistant> {{ m['content'] }}{% if not loop.last %} <eos> {% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def make_tokenizer(padding_side: str = "right") -> PreTrainedTokenizerFast:
    vocab = {w: i for i, w in enumerate(dict.fromkeys(SPECIALS + WORDS))}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", padding_side=padding_side
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def make_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=1, eos_token_id=2, bos_token_id=None, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    return make_model(len(tokenizer))


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """Every test session its own cache_dir (PROMPTRL_CACHE, inherited by every `promptrl`
    process a test starts): no score a developer's earlier session or run left in the real cache
    can make a test pass. Only the converted models (`models/`) and assembled GGUF files
    (`gguf/`), which the scores do not depend on beyond the weights the score cache's key names,
    are linked in from the real cache, so the conversion is done once, not every session."""
    real = Path(os.environ.get("PROMPTRL_CACHE", "~/.cache/promptrl")).expanduser()
    cache = tmp_path_factory.mktemp("promptrl-cache")
    for sub in ("models", "gguf"):
        (real / sub).mkdir(parents=True, exist_ok=True)
        (cache / sub).symlink_to(real / sub, target_is_directory=True)
    before = os.environ.get("PROMPTRL_CACHE")
    os.environ["PROMPTRL_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("PROMPTRL_CACHE", None)
    else:
        os.environ["PROMPTRL_CACHE"] = before


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "fsc").is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- the CLI as a user runs it ------------------------------------------------------------------
# The smallest real training schedule (a few steps, a handful of test sentences), shared by the
# model-level tests; a test adds `experiment=cpu_demo` or a task, and overrides after it win.
TINY = ["algo.epochs=1", "algo.batch_size=8", "algo.update_term=1", "algo.prompts_per_step=2",
        "algo.anchor_eval_prompts=2", "algo.ppo_epochs=1", "agent.max_new_tokens=8", "task.max_test_examples=16",
        "checkpoint_every=1", "logger.progress=false"]


def run_cli(*args: str, data: Path | str | None = None, env: dict | None = None,
            timeout: int = 900) -> subprocess.CompletedProcess:
    """`promptrl <args>` in a fresh process. `data` sets PROMPTRL_DATA; `env` adds variables
    (a None value removes one). Never raises on a non-zero exit: tests assert on it."""
    full = {**os.environ}
    full.pop("HYDRA_FULL_ERROR", None)
    if data is not None:
        full["PROMPTRL_DATA"] = str(data)
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = str(value)
    return subprocess.run([sys.executable, "-m", "promptrl.cli", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)


# --- a user's own data --------------------------------------------------------------------------
# SST-2 sentences as a user would bring them: a `review` column and string labels of two tokens
# each that share their first (" thumbs up" / " thumbs down" under SmolLM2's tokenizer).
VERDICTS = {"0": "thumbs down", "1": "thumbs up"}


def write_reviews(path: Path, per_class: int, skip: int = 0, labelled: bool = True) -> Path:
    """`per_class` reviews of each class from SST-2's test file (after the first `skip` of each),
    as CSV, TSV, JSONL, JSON or Parquet by the extension of `path`."""
    import csv
    import json

    rows, seen = [], {"0": 0, "1": 0}
    with (SHARED_DATA / "fsc" / "sst-2" / "test.tsv").open(newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            seen[r["label"]] += 1
            if skip < seen[r["label"]] <= skip + per_class:
                rows.append({"review": r["sentence"], **({"verdict": VERDICTS[r["label"]]} if labelled else {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="," if path.suffix == ".csv" else "\t")
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        import pandas

        pandas.DataFrame(rows).to_parquet(path)
    return path
