"""The target scorer: how good is each prompt on a set of task examples.

Every optimiser (APPO, PPO, APE, OPRO) sees the target only through `Scorer.score`, which takes
P prompts and N examples and answers in one batched call. That single hot path is where speed
work goes, and it is what makes budgets comparable: `calls` counts prompt x example scorings.
Every optimiser ranks prompts by the same `reward` of those scores.
Classification tasks are scored from label-word log-probs; generation tasks by greedy decoding
of all P x N texts in one batched `generate` and the task's answer metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from promptrl.errors import UserError
from promptrl.ledger import Ledger
from promptrl.scoring.cache import example_key
from promptrl.tasks import Example, Task
from promptrl.tasks.metrics import score_answer

log = logging.getLogger(__name__)

# The version of the scoring code, part of every score-cache key (cache_namespace). Bump it in any
# change after which the same target weights, task and prompt would get another score: how texts
# are tokenised, cut to the context (fit_context) or rendered, how label words are read or summed,
# how answers are generated, cut (cut_at_stop) or graded (tasks/metrics.py). Otherwise the cache
# serves the old code's scores as if they were the new code's. Old entries are not deleted, just
# never served again (`promptrl cache merge` keeps them; delete <cache_dir>/scores/ to reclaim them).
SCORING_VERSION = 2  # 2: an over-long text keeps its BOS (fit_context)

# The log-prob of a label the target did not name: a written answer (target.chat.scoring=generate)
# names one label (log-prob 0, the others this) or none (every label this: no prediction, wrong).
NO_LABEL = -1e9


@dataclass
class ClassificationScores:
    """Scores of P prompts on N examples with C label words."""

    label_logprobs: torch.Tensor  # [P, N, C] log p(label word | rendered input), full-vocabulary softmax
    labels: torch.Tensor  # [N] gold class index
    # True when the scores are the target's written answers (one label named, or none) rather
    # than probabilities: there is no margin then, and the reward is c_a * accuracy.
    answers: bool = False

    @property
    def probs(self) -> torch.Tensor:
        """[P, N, C] softmax over the label words only (the paper's verbaliser distribution)."""
        return torch.softmax(self.label_logprobs, dim=-1)

    @property
    def predictions(self) -> torch.Tensor:
        """[P, N] the label with the highest score; -1 where the target named no label (NO_LABEL)."""
        best = self.label_logprobs.max(-1)
        return torch.where(best.values <= NO_LABEL, torch.full_like(best.indices, -1), best.indices)

    @property
    def correct(self) -> torch.Tensor:
        return (self.predictions == self.labels).float()

    @property
    def accuracy(self) -> torch.Tensor:
        """[P] fraction of examples each prompt gets right."""
        return self.correct.mean(-1)

    @property
    def margin(self) -> torch.Tensor:
        """[P] mean over examples of p(gold) - max p(wrong), softmax over label words, in [-1, 1];
        zeros for written answers (a one-hot answer's margin would only restate its accuracy)."""
        if self.answers:
            return torch.zeros(self.label_logprobs.shape[0])
        p = self.probs
        gold = p.gather(-1, self.labels.view(1, -1, 1).expand(p.shape[0], -1, 1)).squeeze(-1)
        wrong = p.scatter(-1, self.labels.view(1, -1, 1).expand(p.shape[0], -1, 1), float("-inf"))
        return (gold - wrong.max(-1).values).mean(-1)


@dataclass
class GenerationScores:
    """Scores of P prompts on N examples of a generation task: per example, the task metric and
    the reward metric of the target's answer (best over the gold answers)."""

    values: torch.Tensor  # [P, N, 2]: (task metric, reward metric)

    @property
    def correct(self) -> torch.Tensor:
        return self.values[..., 0]

    @property
    def accuracy(self) -> torch.Tensor:
        """[P] mean task metric (EM, F1, exact-set or contains); named like classification's so
        selection, APPO's anchor check and the results read the same."""
        return self.correct.mean(-1)

    @property
    def margin(self) -> torch.Tensor:
        """[P] zeros: a written answer has no margin over the other classes."""
        return torch.zeros(self.values.shape[0])


def reward(scores: ClassificationScores | GenerationScores, acc_coef: float, margin_coef: float) -> torch.Tensor:
    """[P] StablePrompt's reward, the one every optimiser ranks prompts by (REFERENCE §3.3).

    Classification: c_a * accuracy + c_s * margin, batch means; the margin (softmax over the
    label words, not the authors' full-vocabulary bug) mostly breaks ties between prompts of
    equal accuracy. Generation: the mean reward metric (F1) as it is, "we use the F1 score
    directly as the reward", so the coefficients do not apply.
    """
    if isinstance(scores, GenerationScores):
        return scores.values[..., 1].mean(-1)
    return acc_coef * scores.accuracy + margin_coef * scores.margin


def reward_range(task: Task, acc_coef: float, margin_coef: float, answers: bool = False) -> float:
    """The width of the interval `reward` lives in: |c_a| + |c_s| for classification (accuracy
    in [0, 1], margin in [-1, 1] mostly near 0), |c_a| for written answers (no margin), 1 for
    generation (a metric in [0, 1]). Also the best reward there is where every answer is right
    and, with probabilities, certain."""
    if task.is_generation:
        return 1.0
    return abs(acc_coef) + (0.0 if answers else abs(margin_coef))


@dataclass(frozen=True)
class LabelTokens:
    """Each label word's token ids under the target's tokenizer (the word tokenised on its own,
    as it follows the rendered text). A label's score is the sum of its tokens' log-probs, each
    given the text and the label's tokens before it; a one-token label's is its next-token
    log-prob, today's fast path."""

    words: tuple[str, ...]
    seqs: tuple[tuple[int, ...], ...]

    @property
    def single(self) -> bool:
        return all(len(s) == 1 for s in self.seqs)

    @property
    def first(self) -> list[int]:
        return [s[0] for s in self.seqs]

    @property
    def longest(self) -> int:
        return max(len(s) for s in self.seqs)

    def steps(self) -> list[tuple[tuple[int, ...], list[int]]]:
        """The plan of a backend that reads next-token log-probs (vLLM, server): every context a
        label token follows (the label's first j tokens) once, with the tokens that follow it.
        Labels sharing a first token share that step and differ in a later one, so they are
        never decided by their first token alone. One-token labels: one step, the empty
        context with every label id, which is the fast path's request."""
        plan: dict[tuple[int, ...], list[int]] = {}
        for seq in self.seqs:
            for j, token in enumerate(seq):
                nxt = plan.setdefault(tuple(seq[:j]), [])
                if token not in nxt:
                    nxt.append(token)
        return list(plan.items())

    def combine(self, step_logprobs: list[torch.Tensor]) -> torch.Tensor:
        """[N, C] label scores from each step's [N, len(next tokens)] log-probs, in `steps()` order."""
        plan = self.steps()
        where = {ctx: (k, {t: m for m, t in enumerate(nxt)}) for k, (ctx, nxt) in enumerate(plan)}
        n = step_logprobs[0].shape[0]
        out = torch.zeros(n, len(self.seqs), dtype=step_logprobs[0].dtype)
        for c, seq in enumerate(self.seqs):
            for j, token in enumerate(seq):
                k, col = where[tuple(seq[:j])]
                out[:, c] += step_logprobs[k][:, col[token]]
        return out


def label_tokens(tokenizer, label_words: list[str], model_name: str) -> LabelTokens:
    """The label words' token ids, or a UserError naming the word and how to fix it."""
    seqs = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for word in label_words:
        pieces = tokenizer.tokenize(word)
        ids = tokenizer.convert_tokens_to_ids(pieces)
        if not ids:
            raise UserError(f"label word {word!r} has no tokens for target {model_name!r}; expected a word such as ' positive'")
        if unk is not None and unk in ids:
            raise UserError(f"label word {word!r} has a token the target {model_name!r} does not know ({pieces}); "
                            "choose a word of its vocabulary")
        seqs.append(tuple(ids))
    for a in range(len(seqs)):
        for b in range(a):
            if seqs[a] == seqs[b]:
                raise UserError(f"label words {label_words[b]!r} and {label_words[a]!r} are the same tokens "
                                f"{tokenizer.convert_ids_to_tokens(list(seqs[a]))} for target {model_name!r}; "
                                "give each class a word of its own (task.label_words)")
    return LabelTokens(tuple(label_words), tuple(seqs))


def label_token_ids(tokenizer, label_words: list[str], model_name: str) -> list[int]:
    """The single vocabulary id of each label word, for code that reads one next-token
    distribution only (scripts/bench_scoring.py's reference loop)."""
    labels = label_tokens(tokenizer, label_words, model_name)
    for word, seq in zip(labels.words, labels.seqs):
        if len(seq) != 1:
            raise UserError(f"label word {word!r} is {len(seq)} tokens {tokenizer.convert_ids_to_tokens(list(seq))} "
                            f"for target {model_name!r}; this needs one-token label words")
    return labels.first


def fit_context(seqs: list[list[int]], limit: int | None, bos_id: int | None = None) -> list[list[int]]:
    """A text longer than `limit` tokens (the target's context less the room kept for what it
    writes) keeps its last tokens: the start of an over-long instruction is dropped, the input and
    the answer slot stay (and it is scored, not rejected, so an agent that rambles simply earns
    what its truncated prompt earns). A text that starts with `bos_id` (the BOS the tokenizer
    adds) keeps it and is cut after it: Gemma without its BOS answers garbage. A limit that leaves
    no token for the text is a UserError."""
    if limit is None:
        return seqs
    heads = [1 if bos_id is not None and s and s[0] == bos_id else 0 for s in seqs]
    if seqs and limit - max(heads) < 1:
        raise UserError(f"the target's context leaves {limit} token(s) for a text{' after its BOS' if any(heads) else ''}: "
                        "no room for it; use a target with a longer context or keep less room for its answer")
    if all(len(s) <= limit for s in seqs):
        return seqs
    n = sum(len(s) > limit for s in seqs)
    log.warning("%d of %d texts exceed the target's context of %d tokens; their prompts are cut from the left%s",
                n, len(seqs), limit, " (after the BOS)" if any(heads) else "")
    return [s if len(s) <= limit else s[:h] + s[len(s) - (limit - h):] for s, h in zip(seqs, heads)]


class Scorer:
    """Base class: subclasses implement `_label_logprobs` for a flat list of rendered texts (and
    `generate` for generation tasks). A backend that tokenises here sets `tokenizer` and
    `max_len` and starts from `encode`, so every backend scores the same ids.

    `calls` counts prompt x example scorings asked for (the budget's unit, cached or not);
    `tokens` the target tokens actually processed; `cache_hits`/`cache_misses` the scorings
    answered by the prompt-score cache or computed (both 0 without a cache).
    """

    tokenizer = None  # the target's tokenizer
    max_len: int | None = None  # the target's context in tokens; None: not known, nothing is cut
    answers = False  # True: classification scores are written answers (ClassificationScores.answers)

    def __init__(self, task: Task, name: str):
        self.task = task
        self.name = name
        self.calls = 0
        self.tokens = 0
        self.cache = None  # a ScoreCache, attached by build_scorer
        self.cache_hits = 0
        self.cache_misses = 0
        self.ledger = Ledger()  # the run's, attached by open_models; its own when built alone

    def identity(self) -> dict:
        """What, besides the task's template and label words, determines this scorer's scores."""
        return {"scorer": type(self).__name__, "name": self.name}

    def close(self) -> None:
        """Release what the backend holds beyond memory (engine processes, connections) and the
        score cache's shard (a sweep runs many jobs in one process)."""
        if self.cache is not None:
            self.cache.close()

    def report(self) -> dict:
        """What this backend adds to a run's results.json (the chat backend: its token usage and
        the answers it could not read); nothing for the local backends."""
        return {}

    def encode(self, texts: list[str], room: int = 0) -> list[list[int]]:
        """The target's token ids of each text, cut to leave `room` tokens of the context for what
        the target writes (fit_context), and counted in `tokens`."""
        seqs = self.tokenizer(texts, add_special_tokens=True)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.max_len and self.max_len - room < 1 + any(s[:1] == [bos] for s in seqs if bos is not None):
            raise UserError(f"target {self.name!r} has a context of {self.max_len} tokens and {room} are kept for what it "
                            "writes (task.max_new_tokens, or the longest label word): no room for the text; lower "
                            "task.max_new_tokens, shorten the label words, or raise the context (target.vllm.max_model_len)")
        seqs = fit_context(seqs, self.max_len - room if self.max_len else None, bos)
        self.tokens += sum(len(s) for s in seqs)
        return seqs

    def score(self, prompts: list[str], examples: list[Example]) -> ClassificationScores | GenerationScores:
        if not prompts or not examples:
            raise ValueError("score() needs at least one prompt and one example")
        n = len(examples)
        with self.ledger.timed("score"):
            rows = self._cached(prompts, [examples] * len(prompts),
                                lambda todo: self._score_rows([prompts[i] for i in todo], examples).view(len(todo), n, -1))
        lp = torch.stack(rows)
        if self.task.is_generation:
            return GenerationScores(values=lp)
        return ClassificationScores(label_logprobs=lp, labels=torch.tensor([ex.label for ex in examples]),
                                    answers=self.answers)

    def score_pairs(self, prompts: list[str], examples: list[Example]) -> ClassificationScores | GenerationScores:
        """Scores of prompt i on example i only (input-specific prompts, TTE), as one row:
        `accuracy` is then [1], the mean over the pairs. Cached and counted like `score`."""
        if len(prompts) != len(examples) or not prompts:
            raise ValueError("score_pairs() needs as many prompts as examples, at least one")
        with self.ledger.timed("score"):
            rows = self._cached(prompts, [[ex] for ex in examples], lambda todo: self._score_pairs(
                [(prompts[i], examples[i]) for i in todo]).unsqueeze(1))
        out = torch.cat(rows)
        if self.task.is_generation:
            return GenerationScores(values=out.unsqueeze(0))
        return ClassificationScores(label_logprobs=out.unsqueeze(0), labels=torch.tensor([ex.label for ex in examples]),
                                    answers=self.answers)

    def _cached(self, prompts: list[str], examples: list[list[Example]], score_new) -> list[torch.Tensor]:
        """Each prompt's scores on its own examples ([len(examples[i]), width] each), through the
        prompt-score cache: what it holds is read, and only the rest reaches the target. Prompts
        with nothing cached go to `score_new(indices)` together, so one batched call (and the HF
        backend's shared-prefix pass) covers them; a prompt with part of its examples cached is
        scored alone on the others. Everything computed is stored; every scoring asked for counts
        in `calls`, cached or not."""
        width = 2 if self.task.is_generation else len(self.task.label_words)
        out = [torch.empty(len(exs), width) for exs in examples]
        got: list[dict] = [{} for _ in prompts]
        keys: list[list[str]] = []
        if self.cache:
            keys = [[example_key(ex.text, ex.answers) for ex in exs] for exs in examples]
            got = [self.cache.get(p, ks) for p, ks in zip(prompts, keys)]
            self.cache_hits += sum(k in g for ks, g in zip(keys, got) for k in ks)
            self.cache_misses += sum(k not in g for ks, g in zip(keys, got) for k in ks)
        todo = [i for i, g in enumerate(got) if not g]
        partial = [i for i, g in enumerate(got) if g and not all(k in g for k in keys[i])]
        for i, g in enumerate(got):
            for j, k in enumerate(keys[i] if g else []):
                if k in g:
                    out[i][j] = g[k]
        if todo:
            for row, fresh in zip(todo, score_new(todo)):
                out[row][:] = fresh
        for i in partial:
            missing = [j for j, k in enumerate(keys[i]) if k not in got[i]]  # a repeated input is scored each time
            fresh = self._score_rows([prompts[i]], [examples[i][j] for j in missing])
            for r, j in enumerate(missing):
                out[i][j] = fresh[r]
        if self.cache:
            for i in todo + partial:
                self.cache.put(prompts[i], keys[i], out[i])
        self.calls += sum(len(exs) for exs in examples)
        return out

    def _score_rows(self, prompts: list[str], examples: list[Example]) -> torch.Tensor:
        """[P * N, width] for every prompt x example, prompt-major."""
        return self._score_pairs([(p, ex) for p in prompts for ex in examples], group_size=len(examples))

    def _score_pairs(self, pairs: list[tuple[str, Example]], group_size: int | None = None) -> torch.Tensor:
        """[len(pairs), width] for each (prompt, example); `group_size` consecutive pairs share a
        prompt. The backends that read one text per pair score the rendered template; the chat
        backend places prompt and input in messages of their own."""
        texts = [self.task.render(p, ex.text) for p, ex in pairs]
        return self._score_texts(texts, [ex for _, ex in pairs], group_size=group_size)

    def _score_texts(self, texts: list[str], examples: list[Example], group_size: int | None = None) -> torch.Tensor:
        """[len(texts), width]: label log-probs, or for a generation task (task metric, reward
        metric) of the target's greedy answer to each text against its example's answers."""
        if not self.task.is_generation:
            return self._label_logprobs(texts, group_size=group_size)
        return self._answer_scores(self.generate(texts, self.task.max_new_tokens, self.task.stop), examples)

    def _answer_scores(self, answers: list[str], examples: list[Example]) -> torch.Tensor:
        """[len(answers), 2]: (task metric, reward metric) of each answer against its example's answers."""
        return torch.tensor([[score_answer(self.task.metric, a, ex.answers), score_answer(self.task.reward_metric, a, ex.answers)]
                             for a, ex in zip(answers, examples)], dtype=torch.float32)

    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        """[len(texts), C]; texts come prompt-major, `group_size` per prompt."""
        raise NotImplementedError

    def generate(self, texts: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        """The target's greedy continuation of each text (generation tasks: instruction
        induction, BIG-Bench generation), cut before the first stop string and stripped."""
        raise NotImplementedError(f"{type(self).__name__} does not generate")

    def answer(self, prompt: str, inputs: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        """The target's greedy answer to each input under `prompt` (`promptrl predict` on a
        generation task): the rendered template, or the chat backend's messages."""
        return self.generate([self.task.render(prompt, x) for x in inputs], max_new_tokens, stop)


def cut_at_stop(text: str, stop) -> str:
    """`text` without its leading whitespace, up to the first stop string after that, stripped:
    a target that answers "\nParis" answers "Paris" (a stop string is the end of an answer, not
    the blank before it)."""
    text = text.lstrip()
    end = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=len(text))
    return text[:end].strip()


def stopped_after_text(text: str, stop) -> bool:
    """True once `text` holds a stop string after some non-space text (see cut_at_stop)."""
    text = text.lstrip()
    return any(s and s in text for s in stop)


BACKENDS = ("hf", "vllm", "server", "chat")


def build_scorer(target_cfg, task: Task, cache_dir: str, engine=None) -> Scorer:
    """`engine`: a vLLM engine that already serves the target's model (one shared with the agent)."""
    backend = target_cfg.backend
    if backend == "hf":
        from promptrl.scoring.hf import HFScorer as cls
    elif backend == "vllm":
        from promptrl.scoring.vllm_engine import VLLMScorer as cls
    elif backend == "server":
        from promptrl.scoring.server import ServerScorer as cls
    elif backend == "chat":
        from promptrl.scoring.chat import ChatScorer as cls
    else:
        raise UserError(f"unknown target.backend {backend!r}; expected one of: {', '.join(BACKENDS)}")
    scorer = cls.from_config(target_cfg, task, cache_dir, **({"llm": engine} if engine is not None else {}))
    if target_cfg.score_cache:
        attach_cache(scorer, Path(cache_dir).expanduser())
    return scorer


def cache_namespace(scorer: Scorer) -> str:
    """The score cache's key for everything but the prompt and the example: the scorer's identity
    (backend, target model, which weights — the hub commit or the files' fingerprint —, revision,
    dtype; a server: its URL and served model), the task's scoring identity (template and label
    words; generation: template, metrics, max_new_tokens, stop) and SCORING_VERSION. The task's
    name is not part of it: it changes no score."""
    from promptrl.scoring.cache import namespace

    return namespace(**scorer.identity(), **scorer.task.scoring_identity(), scoring_version=SCORING_VERSION)


def attach_cache(scorer: Scorer, cache_dir: Path) -> None:
    """Give `scorer` the prompt-score cache in `<cache_dir>/scores/` (promptrl/scoring/cache.py),
    unless it cannot tell which weights it scores with (its identity's `weights` is None): then the
    run scores without a cache rather than risk serving another model's scores."""
    from promptrl.scoring.cache import ScoreCache

    identity = scorer.identity()
    if "weights" in identity and identity["weights"] is None:
        log.warning("score cache off: cannot tell which weights of %s the target loaded (not a local directory, "
                    "and no hub commit in the local hub cache); set target.revision to a commit to cache its scores",
                    identity.get("model"))
        return
    scorer.cache = ScoreCache(Path(cache_dir), cache_namespace(scorer))
