"""Target scoring through any OpenAI-compatible `/v1/chat/completions` endpoint (target.backend=chat).

A hosted model is known only by its answers: no tokenizer, no exact label log-probs. Each
(prompt, input) is one chat request (the chat API takes one conversation per request),
`max_concurrency` at a time through the shared `promptrl.chat.ChatEndpoint` (retries, one-line
errors, token usage). Where the instruction goes is `target.chat.placement`: `system` puts it in
the system message and the task's template without it (the input and its answer cue) in the user
turn; `user` sends the whole rendered template as one user turn, instruction first.

Classification, `target.chat.scoring`:

  logprobs  one answer token, temperature 0, with the top 20 log-probs. A label word's log-prob
            is that of its first word as the answer's first token (texts compared stripped and
            case-sensitive, several entries with that text summed), so the label words' first
            words must differ and none may start another's (refused otherwise, pointing to
            `generate`). A label missing from the top 20 gets the 20th's log-prob, an upper bound,
            and is counted (`missing_label_logprobs`). Reward as on the other backends.
  generate  a short greedy answer (`answer_tokens`), read as the label whose word or name it is
            (case- and space-insensitive; the answer's first line, surrounding punctuation
            dropped; it may go on after the label, e.g. "Positive. The review ..."). An answer
            naming no label is wrong and counted (`unparsed_answers`). The scores are answers,
            not probabilities: reward = c_a * accuracy, no margin.

Generation tasks are always answered greedily (`task.max_new_tokens`, cut at `task.stop`) and
scored with the task's metric, as on the other backends.
"""

from __future__ import annotations

import logging
import math
import threading

import torch

from promptrl.chat import ChatEndpoint, endpoint_id, one_line
from promptrl.errors import UserError
from promptrl.scoring import NO_LABEL, Scorer, cut_at_stop
from promptrl.tasks import Example, Task

log = logging.getLogger(__name__)
SCORINGS = ("logprobs", "generate")
PLACEMENTS = ("system", "user")
TOP_LOGPROBS = 20  # the most OpenAI's API returns, and vLLM's default --max-logprobs
PUNCTUATION = " \t\"'`*_.,:;!?()[]{}<>"


def label_heads(words: list[str]) -> list[str]:
    """Each label word's first word, as the first token of an answer shows it (stripped,
    case-sensitive), or a UserError when two cannot be told apart that way: the same first word,
    or one a prefix of another (an answer token "good" could begin "goodish")."""
    heads = []
    for word in words:
        if not word.strip():
            raise UserError(f"label word {word!r} is blank; give each class a word (task.label_words)")
        heads.append(word.split()[0])
    for a in range(len(heads)):
        for b in range(len(heads)):
            if a != b and heads[b].startswith(heads[a]):
                raise UserError(f"label words {words[a]!r} and {words[b]!r} start alike ({heads[a]!r}, {heads[b]!r}): "
                                "target.chat.scoring=logprobs reads only the answer's first token, which cannot tell "
                                "them apart; use target.chat.scoring=generate (or label words whose first words differ)")
    return heads


def normalise(text: str) -> str:
    return " ".join(text.lower().split()).strip(PUNCTUATION)


def answer_forms(task: Task) -> list[set[str]]:
    """The texts that name each class in a written answer: its label word and its label name,
    normalised; a text naming two classes is refused."""
    names = list(task.label_names) if task.label_names else []
    forms = [{f for f in (normalise(w), normalise(str(names[i])) if i < len(names) else "") if f}
             for i, w in enumerate(task.label_words)]
    for a in range(len(forms)):
        for b in range(a):
            shared = forms[a] & forms[b]
            if shared:
                raise UserError(f"classes {b} and {a} are both named {sorted(shared)[0]!r} (task.label_words / "
                                "task.label_names); a written answer could not tell them apart")
    return forms


def parse_answer(answer: str, forms: list[set[str]]) -> int | None:
    """The class a written answer names: its first line equals a class's word or name, or starts
    with one followed by a non-letter (the longest such match wins); None when it names none."""
    lines = answer.strip().splitlines()
    text = normalise(lines[0]) if lines else ""
    best, length, tied = None, 0, False
    for c, fs in enumerate(forms):
        for f in fs:
            if text == f or (text.startswith(f) and not text[len(f)].isalnum()):
                if len(f) > length:
                    best, length, tied = c, len(f), False
                elif len(f) == length and c != best:
                    tied = True
    return None if tied else best


def logsumexp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


class ChatScorer(Scorer):
    def __init__(self, task: Task, name: str, endpoint: ChatEndpoint, scoring: str = "logprobs",
                 placement: str = "system", answer_tokens: int = 8):
        super().__init__(task, name)
        if scoring not in SCORINGS:
            raise UserError(f"target.chat.scoring={scoring!r}; expected one of: {', '.join(SCORINGS)}")
        if placement not in PLACEMENTS:
            raise UserError(f"target.chat.placement={placement!r}; expected one of: {', '.join(PLACEMENTS)}")
        if answer_tokens < 1:
            raise UserError(f"target.chat.answer_tokens={answer_tokens}; expected an integer >= 1")
        self.endpoint, self.scoring, self.placement, self.answer_tokens = endpoint, scoring, placement, answer_tokens
        self._lock = threading.Lock()
        self.missing_label_logprobs = 0  # label log-probs not in the top 20 (the 20th's taken as an upper bound)
        self.label_logprobs_read = 0  # label log-probs read from top-20 lists, missing or not
        self.unparsed_answers = 0  # written answers (scoring=generate) that named no label: wrong
        self.answers_parsed = 0  # written answers read for a label, named or not
        if not task.is_generation:
            self.answers = scoring == "generate"
            self.heads = label_heads(task.label_words) if scoring == "logprobs" else None
            self.forms = answer_forms(task) if scoring == "generate" else None

    @classmethod
    def from_config(cls, cfg, task: Task, cache_dir: str) -> ChatScorer:
        c = cfg.chat
        return cls(task, cfg.name, ChatEndpoint.from_config("target.chat", c, cfg.model), scoring=c.scoring,
                   placement=c.placement, answer_tokens=c.answer_tokens)

    @property
    def mode(self) -> str:
        return "generate" if self.task.is_generation else self.scoring

    def identity(self) -> dict:
        """Endpoint (host and path), model, scoring mode and placement, and what reads a written
        answer; the config's name is not part of it (it changes no answer)."""
        out = {"scorer": "chat", "endpoint": endpoint_id(self.endpoint.base_url), "model": self.endpoint.model,
               "scoring": self.mode, "placement": self.placement}
        if self.mode == "generate" and not self.task.is_generation:
            out.update(answer_tokens=self.answer_tokens, label_names=[str(n) for n in self.task.label_names])
        return out

    @property
    def usage(self) -> dict:
        return self.endpoint.usage

    def report(self) -> dict:
        return {"target_usage": self.endpoint.usage, "missing_label_logprobs": self.missing_label_logprobs,
                "label_logprobs_read": self.label_logprobs_read, "unparsed_answers": self.unparsed_answers,
                "answers_parsed": self.answers_parsed}

    def close(self) -> None:
        u = self.endpoint.usage
        if u["requests"]:
            cost = "" if u["cost_usd"] is None else f", cost {u['cost_usd']:.4f} at the configured prices"
            log.info("%s: %d requests, %d input and %d output tokens%s", self.endpoint.name, u["requests"],
                     u["input_tokens"], u["output_tokens"], cost)
        if self.missing_label_logprobs:
            log.warning("%d of %d label log-probs were not in the target's top %d and were scored as the %dth's (an upper "
                        "bound); many of them mean the model answers with other words or splits the label words: "
                        "target.chat.scoring=generate reads its written answers instead", self.missing_label_logprobs,
                        self.label_logprobs_read, TOP_LOGPROBS, TOP_LOGPROBS)
        if self.unparsed_answers:
            log.warning("%d of %d answers named no label and were scored wrong", self.unparsed_answers, self.answers_parsed)
        self.endpoint.close()
        super().close()

    # --- requests ----------------------------------------------------------------------------------
    def messages(self, prompt: str, text: str) -> list[dict]:
        if self.placement == "user":
            return [{"role": "user", "content": self.task.render(prompt, text)}]
        system = [{"role": "system", "content": prompt}] if prompt.strip() else []
        return system + [{"role": "user", "content": self.task.render("", text)}]

    def _score_pairs(self, pairs: list[tuple[str, Example]], group_size: int | None = None) -> torch.Tensor:
        conversations = [self.messages(p, ex.text) for p, ex in pairs]
        before = self.endpoint.input_tokens
        try:
            if self.task.is_generation:
                return self._answer_scores(self._greedy(conversations, self.task.max_new_tokens, self.task.stop),
                                           [ex for _, ex in pairs])
            if self.scoring == "generate":
                return self._parsed(self._greedy(conversations, self.answer_tokens, ()))
            return torch.stack(self.endpoint.run_all(self._label_row, conversations))
        finally:
            self.tokens += self.endpoint.input_tokens - before

    def _label_row(self, conversation: list[dict]) -> torch.Tensor:
        """[C] label log-probs from the top-20 list of the answer's first token."""
        response = self.endpoint.create(messages=conversation, max_tokens=1, temperature=0.0, logprobs=True,
                                        top_logprobs=TOP_LOGPROBS)
        choice = response.choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        top = content[0].top_logprobs if content else None
        if not top:
            raise UserError(f"{self.endpoint.name} returned no top log-probs for the answer's first token; this "
                            "endpoint or model does not give log-probs: use target.chat.scoring=generate")
        floor = min(t.logprob for t in top)
        row, missing = [], 0
        for head in self.heads:
            found = [t.logprob for t in top if t.token.strip() == head]
            row.append(logsumexp(found) if found else floor)
            missing += not found
        with self._lock:
            self.missing_label_logprobs += missing
            self.label_logprobs_read += len(self.heads)
        return torch.tensor(row, dtype=torch.float32)

    def _greedy(self, conversations: list[list[dict]], max_tokens: int, stop) -> list[str]:
        # No server-side stop: a newline before any text would end the answer empty (cut_at_stop
        # cuts after the text, as the other backends do).
        def ask(conversation):
            response = self.endpoint.create(messages=conversation, max_tokens=max_tokens, temperature=0.0)
            return cut_at_stop(response.choices[0].message.content or "", stop)

        return self.endpoint.run_all(ask, conversations)

    def _parsed(self, answers: list[str]) -> torch.Tensor:
        rows = torch.full((len(answers), len(self.forms)), NO_LABEL)
        unparsed = 0
        for i, a in enumerate(answers):
            c = parse_answer(a, self.forms)
            if c is None:
                unparsed += 1
                log.debug("answer %r names no label", one_line(a, 80))
            else:
                rows[i, c] = 0.0
        self.unparsed_answers += unparsed
        self.answers_parsed += len(answers)
        return rows

    def generate(self, texts: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        """Greedy answers to rendered texts, each sent as one user turn (placement does not apply:
        the instruction is inside the text)."""
        return self._greedy([[{"role": "user", "content": t}] for t in texts], max_new_tokens, stop)

    def answer(self, prompt: str, inputs: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        return self._greedy([self.messages(prompt, x) for x in inputs], max_new_tokens, stop)
