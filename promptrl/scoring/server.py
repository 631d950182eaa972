"""Target scoring through an OpenAI-compatible completions endpoint (target.backend=server).

Meant for `vllm serve` (one big target, possibly tensor-parallel on other GPUs or another
machine). Texts are tokenised here and sent as token-id prompts, so the server scores exactly
the tokens the other backends score. Each request asks for one token with vLLM's
`logprob_token_ids` extension, which returns the exact log-probability of every label word.
Label words of several tokens are scored as the vLLM backend scores them: one request per
label-token context (the text plus a label's first tokens, `LabelTokens.steps`), summed.
An endpoint without that extension (OpenAI's own API, most other servers) can only return the
top-k log-probs, where label words are often missing; such an endpoint is refused with a clear
error rather than scored approximately.

Requests of `batch_size` texts run `concurrency` at a time; connection errors, timeouts, 429 and
5xx answers are retried with exponential backoff, other errors stop the run with the server's
message.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from promptrl.errors import UserError
from promptrl.models import load_tokenizer
from promptrl.scoring import Scorer, cut_at_stop, label_tokens
from promptrl.tasks import Task

log = logging.getLogger(__name__)
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


def read_key_file(name: str | None) -> str | None:
    """The API key in the first line of a file (target.server.api_key_file); a file others can
    read is used with a warning, since the key is then not a secret on that machine."""
    if not name:
        return None
    path = Path(name).expanduser()
    try:
        key = path.read_text(encoding="utf-8").strip().splitlines()[0].strip()
    except (OSError, UnicodeDecodeError, IndexError) as e:
        raise UserError(f"target.server.api_key_file={name!r} cannot be read ({type(e).__name__}); expected a file "
                        "whose first line is the key, e.g. vllm-server-<jobid>.key") from None
    if path.stat().st_mode & 0o077:
        log.warning("%s can be read by other users (mode %o); chmod 600 it", path, path.stat().st_mode & 0o777)
    return key


class ServerScorer(Scorer):
    def __init__(self, tokenizer, task: Task, name: str, url: str, served_model: str, api_key: str | None = None,
                 concurrency: int = 8, batch_size: int = 32, timeout_s: float = 120.0, max_retries: int = 5,
                 backoff_s: float = 1.0, max_len: int | None = None, revision: str | None = None):
        super().__init__(task, name)
        self.revision = revision
        for key, value in {"concurrency": concurrency, "batch_size": batch_size, "max_retries + 1": max_retries + 1}.items():
            if value < 1:
                raise UserError(f"target.server.{key.split()[0]}={value}; expected a positive integer")
        self.tokenizer = tokenizer
        self.labels = label_tokens(tokenizer, task.label_words, name)
        self.url = url.rstrip("/")
        self.served_model = served_model
        self.concurrency, self.batch_size = concurrency, batch_size
        self.max_retries, self.backoff_s = max_retries, backoff_s
        if api_key == "<redacted>":  # a saved config's placeholder is never a key (promptrl/rundir.py)
            raise UserError("target.server.api_key is the placeholder <redacted> from a saved config; give the key "
                            "through the environment, e.g. target.server.api_key='${oc.env:OPENAI_API_KEY}'")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout_s, headers=headers,
                                   limits=httpx.Limits(max_connections=concurrency))
        self.max_len = max_len if max_len is not None else self._served_max_len()

    def identity(self) -> dict:
        """The server is known by its URL and served model; target.revision (the tokenizer's, and
        the served weights' when the config says so) is added when set. The server's dtype is not
        known here: restart a server with other weights or dtype under another URL or model name."""
        revision = {"revision": self.revision} if self.revision else {}  # unset: the namespace of before
        return {"scorer": "server", "name": self.name, "url": self.url, "model": self.served_model, **revision}

    @classmethod
    def from_config(cls, cfg, task: Task, cache_dir: str) -> ServerScorer:
        s = cfg.server
        return cls(load_tokenizer(cfg, cache_dir), task, cfg.name, s.url, s.served_model or cfg.model,
                   api_key=s.api_key or read_key_file(s.get("api_key_file")), concurrency=s.concurrency, batch_size=s.batch_size, timeout_s=s.timeout_s,
                   max_retries=s.max_retries, backoff_s=s.backoff_s, revision=cfg.revision)

    def close(self) -> None:
        self.client.close()
        super().close()

    def _post(self, path: str, payload: dict | None = None) -> dict:
        """One call with retries; a UserError names the URL and what the server said."""
        url = f"{self.url}{path}"
        for attempt in range(self.max_retries + 1):
            try:
                r = self.client.post(url, json=payload) if payload is not None else self.client.get(url)
            except httpx.TransportError as e:  # refused, reset, timed out
                problem = f"{type(e).__name__}: {e}"
            else:
                if r.status_code < 400:
                    return r.json()
                problem = f"HTTP {r.status_code}: {r.text[:300]}"
                if r.status_code not in RETRY_STATUS:
                    raise UserError(f"target server {url} refused the request ({problem})")
            if attempt < self.max_retries:
                delay = self.backoff_s * 2 ** attempt
                log.warning("target server %s: %s; retry %d/%d in %.1fs", url, problem, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise UserError(f"target server {url} failed after {self.max_retries + 1} attempts ({problem}); "
                        "check target.server.url and that the server is up")

    def _served_max_len(self) -> int | None:
        """vLLM lists each model's context length under /models; other servers may not."""
        models = self._post("/models").get("data", [])
        names = [m.get("id") for m in models]
        if self.served_model not in names:
            raise UserError(f"target server {self.url} does not serve model {self.served_model!r}; it serves {names} "
                            "(set target.server.served_model)")
        return next(m.get("max_model_len") for m in models if m.get("id") == self.served_model)

    def _score_batch(self, seqs: list[list[int]], label_ids: list[int]) -> torch.Tensor:
        """[len(seqs), len(label_ids)] next-token log-probs of those ids after each sequence."""
        answer = self._post("/completions", {
            "model": self.served_model, "prompt": seqs, "max_tokens": 1, "temperature": 0.0,
            "logprobs": len(label_ids), "logprob_token_ids": label_ids, "return_tokens_as_token_ids": True,
        })
        out = torch.empty(len(seqs), len(label_ids))
        choices = sorted(answer["choices"], key=lambda c: c["index"])
        if len(choices) != len(seqs):
            raise UserError(f"target server {self.url} answered {len(choices)} choices for {len(seqs)} prompts")
        for i, choice in enumerate(choices):
            step = (choice.get("logprobs") or {}).get("top_logprobs") or [{}]
            got = step[0] or {}
            missing = [t for t in label_ids if f"token_id:{t}" not in got]
            if missing:
                raise UserError(
                    f"target server {self.url} returned no log-probs for label token ids {missing}; the server "
                    "backend needs an endpoint with vLLM's `logprob_token_ids` (e.g. `vllm serve`)"
                )
            out[i] = torch.tensor([got[f"token_id:{t}"] for t in label_ids])
        return out

    def _label_logprobs(self, texts: list[str], group_size: int | None = None) -> torch.Tensor:
        seqs = self.encode(texts, room=self.labels.longest)  # a label's first tokens and the one generated
        steps = self.labels.steps()  # one step, every label id, for one-token labels
        # Consecutive texts share a prompt, so a batch shares a prefix the server can cache.
        jobs = [([s + list(context) for s in seqs[i:i + self.batch_size]], following)
                for context, following in steps for i in range(0, len(seqs), self.batch_size)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            parts = list(pool.map(lambda job: self._score_batch(*job), jobs))
        per_batch = len(jobs) // len(steps)
        self.tokens += sum(len(s) for s in seqs) * (len(steps) - 1) + len(seqs) * sum(len(c) for c, _ in steps)
        return self.labels.combine([torch.cat(parts[k * per_batch:(k + 1) * per_batch]) for k in range(len(steps))])

    def generate(self, texts: list[str], max_new_tokens: int, stop: list[str] = ()) -> list[str]:
        seqs = self.encode(texts, room=max_new_tokens)

        def request(batch: list[list[int]]) -> list[str]:
            # No server-side stop: a server stops on a newline before any text too (an answer
            # that starts with "\n" would come back empty); cut_at_stop cuts after the text.
            answer = self._post("/completions", {"model": self.served_model, "prompt": batch, "temperature": 0.0,
                                                 "max_tokens": max_new_tokens})
            return [cut_at_stop(c["text"], stop) for c in sorted(answer["choices"], key=lambda c: c["index"])]

        batches = [seqs[i:i + self.batch_size] for i in range(0, len(seqs), self.batch_size)]
        with ThreadPoolExecutor(self.concurrency) as pool:
            return [text for texts_ in pool.map(request, batches) for text in texts_]
