"""Target scoring with a transformers model: all prompt x input texts in length-sorted chunks."""

from __future__ import annotations

import copy
import logging

import torch

from promptrl.errors import UserError
from promptrl.models import load_model
from promptrl.scoring import Scorer
from promptrl.tasks import Task

log = logging.getLogger(__name__)
# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_SHARED_PREFIX = 4


def label_token_ids(tokenizer, label_words: list[str], model_name: str) -> list[int]:
    """The single vocabulary id of each label word, or a UserError saying how to fix the word."""
    ids = []
    for word in label_words:
        pieces = tokenizer.tokenize(word)
        if len(pieces) != 1:
            stripped = word.strip()
            variants = [v for v in dict.fromkeys([" " + stripped, stripped, " " + stripped.capitalize(), " " + stripped.lower()])
                        if len(tokenizer.tokenize(v)) == 1]
            hint = f"one-token variants: {variants}" if variants else "choose a shorter or more common word"
            raise UserError(
                f"label word {word!r} is {len(pieces)} tokens {pieces} for target {model_name!r}; "
                f"each label word must be one token ({hint})"
            )
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


class HFScorer(Scorer):
    """Scores texts by the target's next-token log-probabilities of the label words.

    Sequences are tokenised once, sorted by length and cut into chunks of at most `batch_tokens`
    padded tokens, so padding waste stays small and memory bounded. With `prefix_reuse`, the
    tokens a prompt's texts share (the instruction) are computed once per prompt. Only the last real position
    of each sequence goes through the output layer. Padding follows the tokenizer's side and the
    last position is gathered explicitly, so left- and right-padding tokenizers give the same
    answer.
    """

    def __init__(self, model, tokenizer, task: Task, name: str, batch_tokens: int = 16384, prefix_reuse: bool = True,
                 revision: str | None = None):
        super().__init__(task, name)
        self.revision = revision
        self.prefix_reuse = prefix_reuse
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.label_ids = torch.tensor(label_token_ids(tokenizer, task.label_words, name))
        self.device = next(model.parameters()).device

    def identity(self) -> dict:
        config = self.model.config
        return {"scorer": "hf", "name": self.name, "model": getattr(config, "_name_or_path", ""),
                "revision": self.revision, "dtype": str(self.model.dtype),
                "vocab": config.vocab_size, "layers": getattr(config, "num_hidden_layers", None)}

    @classmethod
    def from_config(cls, cfg, task: Task, cache_dir: str) -> HFScorer:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        model, tok = load_model(cfg, cache_dir)
        return cls(model, tok, task, cfg.name, batch_tokens=cfg.batch_tokens, prefix_reuse=cfg.prefix_reuse,
                   revision=cfg.revision)

    def _pad(self, seqs: list[list[int]], right: bool = False):
        width = max(len(s) for s in seqs)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        left = self.tokenizer.padding_side == "left" and not right
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            sl = slice(width - len(s), width) if left else slice(0, len(s))
            ids[i, sl] = torch.tensor(s)
            mask[i, sl] = 1
        # Positions count real tokens only, so a left-padded sequence sees the same positions
        # as it would alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        last = torch.full((len(seqs),), width - 1) if left else torch.tensor([len(s) - 1 for s in seqs])
        return ids, mask, positions, last

    @torch.inference_mode()
    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        seqs = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        seqs = self._fit_context(seqs)
        self.tokens += sum(len(s) for s in seqs)
        out = torch.empty(len(seqs), len(self.label_ids))
        size = group_size if (self.prefix_reuse and group_size) else len(seqs)
        for g in range(0, len(seqs), size):
            group = seqs[g:g + size]
            plen = common_prefix_length(group) if self.prefix_reuse else 0
            out[g:g + size] = self._score(group, plen if plen >= MIN_SHARED_PREFIX else 0)
        return out

    def _fit_context(self, seqs: list[list[int]]) -> list[list[int]]:
        """A text longer than the target's context keeps its last tokens: the start of an
        over-long instruction is dropped, the input and the answer slot stay (and it is scored,
        not rejected, so an agent that rambles simply earns what its truncated prompt earns)."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit or all(len(s) <= limit for s in seqs):
            return seqs
        n = sum(len(s) > limit for s in seqs)
        log.warning("%d of %d texts exceed the target's context of %d tokens; their prompts are cut from the left",
                    n, len(seqs), limit)
        return [s[-limit:] for s in seqs]

    def _score(self, seqs: list[list[int]], plen: int) -> torch.Tensor:
        """Label log-probs of `seqs`, whose first `plen` tokens are identical: those are run once
        and their KV cache is copied to every row of a chunk, so only the rest is computed per row."""
        decoder = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        prefix_cache = None
        if plen:
            prefix = torch.tensor(seqs[0][:plen], device=self.device).unsqueeze(0)
            prefix_cache = decoder(input_ids=prefix, use_cache=True).past_key_values
            seqs = [s[plen:] for s in seqs]
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
        out = torch.empty(len(seqs), len(self.label_ids))
        start = 0
        while start < len(order):
            rows = max(1, self.batch_tokens // (plen + len(seqs[order[start]])))
            chunk = order[start:start + rows]
            ids, mask, positions, last = self._pad([seqs[i] for i in chunk], right=plen > 0)
            kwargs = {"use_cache": False}
            if plen:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(chunk))
                mask = torch.cat([torch.ones(len(chunk), plen, dtype=mask.dtype), mask], dim=1)
                kwargs = {"past_key_values": cache, "use_cache": True}
            hidden = decoder(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                position_ids=(positions + plen).to(self.device), **kwargs,
            ).last_hidden_state
            final = hidden[torch.arange(len(chunk), device=self.device), last.to(self.device)]
            logits = head(final).float()
            out[torch.tensor(chunk)] = torch.log_softmax(logits, -1)[:, self.label_ids.to(self.device)].cpu()
            start += rows
        return out


def common_prefix_length(seqs: list[list[int]]) -> int:
    """Tokens shared by every sequence at its start, leaving each at least one token of its own.
    Computed on the full tokenisations, so it is exact even where a tokenizer would merge
    across the prompt/input boundary."""
    limit = min(len(s) for s in seqs) - 1
    n = 0
    first = seqs[0]
    while n < limit and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
