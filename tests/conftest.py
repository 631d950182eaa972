"""Shared fixtures: a tiny random Llama with a word-level tokenizer (fast unit tests) and paths
to the shared benchmark data and the embedded real model (integration tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
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


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "fsc").is_dir():
        pytest.skip(f"shared benchmark data not found at {SHARED_DATA}")
    return SHARED_DATA
