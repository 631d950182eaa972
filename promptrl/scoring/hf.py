"""Target scoring with a transformers model: all prompt x input texts in length-sorted chunks."""

from __future__ import annotations

import logging

import torch
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from promptrl.hfcompat import cache_kwargs, output_cache
from promptrl.models import load_model, model_path, output_logits, parameter_fingerprint, weights_identity
from promptrl.scoring import Scorer, cut_at_stop, label_tokens, stopped_after_text
from promptrl.tasks import Task

log = logging.getLogger(__name__)
# Below this many shared tokens a separate prefix pass costs more than it saves.
MIN_SHARED_PREFIX = 4
# A chunk's rows are at least 1/MAX_PAD_RATIO as long as its longest: bounded padding waste.
MAX_PAD_RATIO = 1.25
# Positions sent through the output layer at once when label words are several tokens: each is a
# full-vocabulary row of logits, so this bounds that memory (e.g. 1024 x 256k fp32 = 1 GiB).
MAX_LOGIT_ROWS = 1024


class HFScorer(Scorer):
    """Scores texts by the target's next-token log-probabilities of the label words.

    With `prefix_reuse`, the tokens a prompt's texts share (the instruction) are computed once
    per prompt, all prompts in one pass, and each text's own tokens then run on a copy of its
    prompt's KV cache. Rows of all prompts are sorted by length and cut into chunks of at most
    `batch_tokens` tokens whose lengths differ by at most `MAX_PAD_RATIO`, so matmuls stay large
    and padding small. Only the last real position of each text goes through the output layer.

    Label words of several tokens: each text is run once per label with the label's tokens
    after it (on the same prefix cache), and the label's score is the sum of its tokens'
    log-probs read at their positions. One-token labels keep the one-row-per-text fast path.
    """

    def __init__(self, model, tokenizer, task: Task, name: str, batch_tokens: int = 16384, prefix_reuse: bool = True,
                 revision: str | None = None, weights: str | None = None):
        super().__init__(task, name)
        self.revision = revision
        self.weights = weights  # models.weights_identity of the files loaded; None: fingerprint the parameters
        self.prefix_reuse = prefix_reuse
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokens = batch_tokens
        self.labels = label_tokens(tokenizer, task.label_words, name)
        self.label_ids = torch.tensor(self.labels.first)
        self.device = next(model.parameters()).device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.max_len = getattr(model.config, "max_position_embeddings", None)

    def identity(self) -> dict:
        """Which weights (the loaded files' commit or fingerprint, or the parameters' own), loaded
        how: dtype, revision."""
        config = self.model.config
        return {"scorer": "hf", "name": self.name, "model": getattr(config, "_name_or_path", ""),
                "revision": self.revision, "dtype": str(self.model.dtype),
                "vocab": config.vocab_size, "layers": getattr(config, "num_hidden_layers", None),
                "weights": self.weights or parameter_fingerprint(self.model)}

    @classmethod
    def from_config(cls, cfg, task: Task, cache_dir: str) -> HFScorer:
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        model, tok = load_model(cfg, cache_dir)
        log.info("HF scorer: %s, %d torch threads", model.dtype, torch.get_num_threads())
        weights = weights_identity(model_path(cfg, cache_dir), cfg.revision, getattr(model.config, "_commit_hash", None))
        return cls(model, tok, task, cfg.name, batch_tokens=cfg.batch_tokens, prefix_reuse=cfg.prefix_reuse,
                   revision=cfg.revision, weights=weights)

    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        if self.labels.single:
            return self._next_token_logprobs(texts, group_size)
        return self._sequence_logprobs(texts, group_size)

    def _shared_prefixes(self, seqs: list[list[int]], group_size: int | None):
        """Each text's group (its prompt), each group's shared prefix length and KV cache."""
        size = group_size if (self.prefix_reuse and group_size) else len(seqs)
        group_of = [i // size for i in range(len(seqs))]
        plens = []
        for g in range(0, len(seqs), size):
            plen = common_prefix_length(seqs[g:g + size]) if self.prefix_reuse else 0
            plens.append(plen if plen >= MIN_SHARED_PREFIX else 0)
        return group_of, plens, self._prefix_caches([seqs[g * size][:p] for g, p in enumerate(plens)])

    @torch.inference_mode()
    def _next_token_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        """One-token labels: one row per text, its last position read."""
        seqs = self.encode(texts)  # the answer is read at the last position, not written: no room kept
        group_of, plens, prefixes = self._shared_prefixes(seqs, group_size)
        suffixes = [s[plens[group_of[i]]:] for i, s in enumerate(seqs)]
        out = torch.empty(len(seqs), len(self.label_ids))
        for chunk in self._chunks([len(s) for s in suffixes], max(plens)):
            rows = torch.tensor(chunk)
            hidden = self._hidden([suffixes[i] for i in chunk], [group_of[i] for i in chunk], plens, prefixes)
            last = torch.tensor([len(suffixes[i]) - 1 for i in chunk], device=self.device)
            final = hidden[torch.arange(len(chunk), device=self.device), last]
            out[rows] = torch.log_softmax(output_logits(self.model, final), -1)[:, self.label_ids.to(self.device)].cpu()
        return out

    @torch.inference_mode()
    def _sequence_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        """Any labels: one row per text and label, text + the label's tokens but its last, on the
        text's prompt prefix; token j of the label is read where the row holds text + label[:j].
        The prefix is the one the texts share (at most a text's length - 1), so every read
        position is in the row's own part."""
        labels = self.labels.seqs
        seqs = self.encode(texts, room=self.labels.longest - 1)
        group_of, plens, prefixes = self._shared_prefixes(seqs, group_size)
        # encode counted each text once; every further label row runs it (and the label) again
        self.tokens += (len(labels) - 1) * sum(len(s) for s in seqs) + len(seqs) * sum(len(t) - 1 for t in labels)
        rows = [(i, c) for i in range(len(seqs)) for c in range(len(labels))]
        suffixes = [seqs[i][plens[group_of[i]]:] + list(labels[c][:-1]) for i, c in rows]
        out = torch.zeros(len(seqs), len(labels))
        for chunk in self._chunks([len(s) for s in suffixes], max(plens)):
            hidden = self._hidden([suffixes[r] for r in chunk], [group_of[rows[r][0]] for r in chunk], plens, prefixes)
            where, targets, owners = [], [], []  # (chunk row, position), the label token there, (text, label)
            for k, r in enumerate(chunk):
                i, c = rows[r]
                start = len(seqs[i]) - plens[group_of[i]] - 1
                for j, token in enumerate(labels[c]):
                    where.append((k, start + j))
                    targets.append(token)
                    owners.append(rows[r])
            for a in range(0, len(where), MAX_LOGIT_ROWS):
                part = torch.tensor(where[a:a + MAX_LOGIT_ROWS], device=self.device)
                logp = torch.log_softmax(output_logits(self.model, hidden[part[:, 0], part[:, 1]]), -1)
                got = logp.gather(1, torch.tensor(targets[a:a + MAX_LOGIT_ROWS], device=self.device).unsqueeze(1)).squeeze(1).cpu()
                for (i, c), value in zip(owners[a:a + MAX_LOGIT_ROWS], got.tolist()):
                    out[i, c] += value
        return out

    @torch.inference_mode()
    def generate(self, texts: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        """Greedy decoding, left-padded batches of similar length with an attention mask; only
        the new tokens are decoded (REFERENCE §3.1's fixes of the authors' generation)."""
        seqs = self.encode(texts, room=max_new_tokens)
        out = [""] * len(seqs)
        for chunk in self._chunks([len(s) for s in seqs], max_new_tokens):
            width = max(len(seqs[i]) for i in chunk)
            ids = torch.full((len(chunk), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                ids[r, width - len(seqs[i]):] = torch.tensor(seqs[i], dtype=torch.long)
                mask[r, width - len(seqs[i]):] = 1
            # a row longer than batch_tokens (alone in its chunk) is prefilled in pieces (see _forward)
            chunked = {"prefill_chunk_size": self.batch_tokens} if len(chunk) * width > self.batch_tokens else {}
            new = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                      do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.pad_id,
                                      stopping_criteria=self._stop_criteria(tuple(stop), width), **chunked)
            self.ledger.target_output_tokens += int((new[:, width:] != self.pad_id).sum())
            for r, i in enumerate(chunk):
                out[i] = cut_at_stop(self.tokenizer.decode(new[r, width:], skip_special_tokens=True), stop)
        return out

    def _stop_criteria(self, stop: tuple[str, ...], prompt_width: int) -> StoppingCriteriaList | None:
        """Ends a row at its first stop string after some text, and a batch once every row has:
        answers are a line long, so most of max_new_tokens is never decoded."""
        if not any(stop):
            return None
        return StoppingCriteriaList([StopAfterText(self.tokenizer, stop, prompt_width)])

    def _chunks(self, lengths: list[int], prefix_width: int) -> list[list[int]]:
        """Row indices, longest first, cut where a chunk would pass `batch_tokens` (prefix slots
        included) or where a row is so much shorter than the chunk's first that padding it would
        waste more than MAX_PAD_RATIO."""
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        chunks: list[list[int]] = []
        for i in order:
            if chunks:
                chunk = chunks[-1]
                width = lengths[chunk[0]]
                if (len(chunk) + 1) * (prefix_width + width) <= self.batch_tokens and lengths[i] * MAX_PAD_RATIO >= width:
                    chunk.append(i)
                    continue
            chunks.append([i])
        return chunks

    def _prefix_caches(self, prefixes: list[list[int]]) -> tuple[list, torch.Tensor] | None:
        """Every prompt's shared prefix in one right-padded pass (causal attention keeps the pads
        out of real positions). Returns per-layer (keys, values) of shape [G, heads, W, dim],
        left-padded so each prefix ends at slot W, and a [G, W] mask of real slots."""
        width = max(len(p) for p in prefixes)
        if width == 0:
            return None
        ids = torch.full((len(prefixes), width), self.pad_id, dtype=torch.long)
        for g, p in enumerate(prefixes):
            ids[g, :len(p)] = torch.tensor(p, dtype=torch.long)
        cache = self._forward(ids.to(self.device), None, None, None, keep_cache=True)[1]
        shift = torch.tensor([width - len(p) for p in prefixes], device=self.device)
        slots = torch.arange(width, device=self.device)
        # Right-aligned gather: slot j of group g holds position j - shift[g] (masked where < 0).
        src = (slots.unsqueeze(0) - shift.unsqueeze(1)).clamp(min=0)
        mask = (slots.unsqueeze(0) >= shift.unsqueeze(1)).long()
        layers = []
        for layer in cache.layers:
            index = src.view(len(prefixes), 1, width, 1).expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
            layers.append((layer.keys.gather(2, index), layer.values.gather(2, index)))
        return layers, mask

    def _hidden(self, suffixes: list[list[int]], groups: list[int], plens: list[int], prefixes) -> torch.Tensor:
        """[rows, width, hidden] final hidden states of one chunk: each row's own tokens,
        right-padded, after its prompt's cached prefix (if any)."""
        n, width = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, s in enumerate(suffixes):
            ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, :len(s)] = 1
        start = torch.tensor([plens[g] for g in groups])
        positions = start.unsqueeze(1) + torch.arange(width).unsqueeze(0)
        cache = None
        if prefixes is not None:
            layers, prefix_mask = prefixes
            g = torch.tensor(groups, device=self.device)
            cache = DynamicCache([(k.index_select(0, g), v.index_select(0, g)) for k, v in layers], config=self.model.config)
            mask = torch.cat([prefix_mask.index_select(0, g).cpu(), mask], dim=1)
        return self._forward(ids.to(self.device), mask.to(self.device), positions.to(self.device), cache)[0]

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor | None, cache,
                 keep_cache: bool = False):
        """(final hidden states [rows, width, hidden], KV cache or None) of the decoder on `ids`
        after `cache` (`mask` covers the cache's slots, then ids'). At most `batch_tokens` new
        tokens per forward pass: _chunks keeps a chunk of several rows within it, and a row longer
        than that (one row alone, a long document) runs in pieces of `batch_tokens` tokens on its
        own growing KV cache (chunked prefill), so batch_tokens bounds the activations of every
        pass; a piece attends to the cache before it, so the result is the whole row's."""
        decoder = self.model.get_decoder()
        rows, width = ids.shape
        step = max(1, self.batch_tokens // rows)
        if width <= step:
            kwargs = {**cache_kwargs(decoder, cache), "use_cache": True} if cache is not None or keep_cache else {"use_cache": False}
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=positions, **kwargs)
            return out.last_hidden_state, (output_cache(out) if keep_cache else None)
        cache = cache if cache is not None else DynamicCache(config=self.model.config)
        past = 0 if mask is None else mask.shape[1] - width
        hidden = []
        for a in range(0, width, step):
            b = min(width, a + step)
            out = decoder(input_ids=ids[:, a:b], attention_mask=None if mask is None else mask[:, :past + b],
                          position_ids=None if positions is None else positions[:, a:b], use_cache=True,
                          **cache_kwargs(decoder, cache))
            cache = output_cache(out)
            hidden.append(out.last_hidden_state)
        return torch.cat(hidden, dim=1), (cache if keep_cache else None)


class StopAfterText(StoppingCriteria):
    """A row is done once its new tokens, decoded, hold a stop string after non-space text
    (transformers' StopStringCriteria would also stop on a newline before the answer)."""

    def __init__(self, tokenizer, stop: tuple[str, ...], start: int):
        self.tokenizer, self.stop, self.start = tokenizer, stop, start

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.start:], skip_special_tokens=True)
        return torch.tensor([stopped_after_text(t, self.stop) for t in texts], device=input_ids.device)


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
