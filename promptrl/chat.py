"""OpenAI-compatible chat endpoints (backend=chat): the client the chat target and the chat
proposer share, and the proposer itself.

`ChatEndpoint` wraps the official `openai` SDK: its `max_retries` retries timeouts, lost
connections, 408/409/429 and 5xx with exponential backoff (0.5 s doubling to 8 s, jittered) and
honours a server's `Retry-After` (up to 2 minutes; 60 s in openai 1.55); what is left after the retries, and every
401/403/404/400, stops the run with one line (a UserError) naming the endpoint and the model.
Requests run `max_concurrency` at a time on threads (the SDK's client is thread-safe). Every
response's `usage` is summed: `usage` (input and output tokens, requests) and `cost_usd`, when
both prices are set, are what a run reports.

`ChatProposer` is the agent of the optimisers that only sample it (APE, OPRO, GEPA): the same
`query_ids` / `sample` interface as `promptrl.agent.Agent`, answered by the endpoint at
temperature 1. The chat API has no open assistant turn to continue, so the answer prefix
("The instruction was :") ends the user turn instead, as in agent.no_chat_template=plain, and
an answer that repeats it has it removed. RL algorithms train a local agent and refuse it.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlparse

import torch

from promptrl.errors import UserError
from promptrl.ledger import Ledger

log = logging.getLogger(__name__)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " …"


def endpoint_id(base_url: str) -> str:
    """The endpoint as the score cache and the messages name it: host[:port] and path, no scheme."""
    u = urlparse(base_url)
    return f"{u.netloc}{u.path.rstrip('/')}" if u.netloc else base_url.rstrip("/")


def import_openai():
    try:
        import openai
    except ImportError:  # a core dependency; only a broken install gets here
        raise UserError("backend=chat needs the openai package: pip install 'openai>=1.55.3'") from None
    return openai


class ChatEndpoint:
    """One OpenAI-compatible chat endpoint and model, as `where` (target.chat, agent.chat) configures it."""

    def __init__(self, where: str, base_url: str, model: str, api_key: str | None = None, max_concurrency: int = 8,
                 timeout_s: float = 60.0, max_retries: int = 8, price_input: float | None = None,
                 price_output: float | None = None):
        checks = [(max_concurrency >= 1, f"{where}.max_concurrency={max_concurrency}; expected an integer >= 1"),
                  (timeout_s > 0, f"{where}.timeout_s={timeout_s}; expected seconds > 0"),
                  (max_retries >= 0, f"{where}.max_retries={max_retries}; expected an integer >= 0"),
                  (bool(model), f"{where}.model is not set; expected the model name the endpoint serves"),
                  (urlparse(base_url or "").scheme in ("http", "https"),
                   f"{where}.base_url={base_url!r}; expected an http(s) URL such as https://api.openai.com/v1")]
        for price in ("price_input", "price_output"):
            value = {"price_input": price_input, "price_output": price_output}[price]
            checks.append((value is None or value >= 0, f"{where}.{price}={value}; expected a price >= 0 per million tokens, or null"))
        for ok, message in checks:
            if not ok:
                raise UserError(message)
        openai = import_openai()
        self.where, self.base_url, self.model = where, base_url.rstrip("/"), model
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.price_input, self.price_output = price_input, price_output
        self.has_key = bool(api_key)
        # No key: a placeholder, since the SDK will not start without one (a local server
        # without --api-key ignores it; a provider answers 401, reported as such).
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or "none", timeout=timeout_s,
                                    max_retries=max_retries)
        self.errors = openai
        self._lock = threading.Lock()
        self.requests = self.input_tokens = self.output_tokens = self.requests_without_usage = 0

    @classmethod
    def from_config(cls, where: str, chat, model: str | None = None) -> ChatEndpoint:
        return cls(where, chat.base_url, chat.model or model, api_key=chat.api_key, max_concurrency=chat.max_concurrency,
                   timeout_s=chat.timeout_s, max_retries=chat.max_retries, price_input=chat.price_input,
                   price_output=chat.price_output)

    @property
    def name(self) -> str:
        return f"{self.where} endpoint {self.base_url} (model {self.model!r})"

    # --- one request ---------------------------------------------------------------------------
    def create(self, raise_bad_request: bool = False, **kwargs):
        """One chat completion (retried by the SDK); its usage counted. Errors the retries could
        not cure end the run with one line; `raise_bad_request` hands a 400 back to the caller."""
        e = self.errors
        try:
            response = self.client.chat.completions.create(model=self.model, **kwargs)
        except (e.AuthenticationError, e.PermissionDeniedError) as err:
            key = "the API key" if self.has_key else "a request without an API key (none is set: export OPENAI_API_KEY)"
            raise UserError(f"{self.name} refused {key} (HTTP {err.status_code}: {one_line(err.message)}); "
                            f"check the key in the environment and that it may use this model") from None
        except e.NotFoundError as err:
            raise UserError(f"{self.name} answered 404 ({one_line(err.message)}): the model is unknown there or "
                            f"{self.where}.base_url is wrong (it ends with /v1 for most servers); set {self.where}.model "
                            f"or {self.where}.base_url") from None
        except e.BadRequestError as err:
            if raise_bad_request:
                raise
            raise UserError(f"{self.name} rejected the request (HTTP 400: {one_line(err.message)})") from None
        except e.APIStatusError as err:  # 408/409/429/5xx left after the retries, or another status
            if err.status_code in (408, 409, 429) or err.status_code >= 500:
                raise UserError(f"{self.name} failed after {self.max_retries} retries (HTTP {err.status_code}: "
                                f"{one_line(err.message)}); raise {self.where}.max_retries or lower "
                                f"{self.where}.max_concurrency") from None
            raise UserError(f"{self.name} refused the request (HTTP {err.status_code}: {one_line(err.message)})") from None
        except e.APIConnectionError as err:  # refused, reset or timed out, after the retries
            raise UserError(f"{self.name} could not be reached after {self.max_retries} retries ({type(err).__name__}: "
                            f"{one_line(err.__cause__ or err)}); check that the server is up and "
                            f"{self.where}.base_url, or raise {self.where}.max_retries / timeout_s") from None
        self.count(response)
        return response

    def count(self, response) -> None:
        usage = getattr(response, "usage", None)
        with self._lock:
            self.requests += 1
            if usage is None:
                self.requests_without_usage += 1
                return
            self.input_tokens += usage.prompt_tokens or 0
            self.output_tokens += usage.completion_tokens or 0

    def run_all(self, fn, items: list) -> list:
        """fn(item) for every item, `max_concurrency` at a time, results in order. The first
        error cancels the requests not yet sent and is raised."""
        if len(items) <= 1:
            return [fn(x) for x in items]
        with ThreadPoolExecutor(min(self.max_concurrency, len(items))) as pool:
            futures = [pool.submit(fn, x) for x in items]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise

    # --- what a run reports --------------------------------------------------------------------
    @property
    def cost_usd(self) -> float | None:
        """The cost of the tokens counted at the configured prices; None when a price is unknown."""
        if self.price_input is None or self.price_output is None:
            return None
        return (self.input_tokens * self.price_input + self.output_tokens * self.price_output) / 1e6

    @property
    def usage(self) -> dict:
        """Token counts as the server's `usage` fields reported them, summed over this process's
        requests (retried attempts that failed report none), and the cost when prices are set."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens, "requests": self.requests,
                "requests_without_usage": self.requests_without_usage, "cost_usd": self.cost_usd,
                "endpoint": endpoint_id(self.base_url), "model": self.model}

    def close(self) -> None:
        self.client.close()


# --- the proposer (agent.backend=chat) ----------------------------------------------------------
@dataclass(frozen=True)
class ChatQuery:
    """What `ChatProposer.query_ids` returns: the agent's query before it is sent."""

    user: str
    prefix: str


@dataclass
class Proposals:
    prompts: list[str]  # the sampled instructions, as `Samples.prompts`


def strip_prefix(answer: str, prefix: str) -> str:
    """The answer without surrounding blanks and without a repeat of the prefix it was asked to follow."""
    text = (answer or "").strip()
    head = prefix.strip()
    if head and text.startswith(head):
        text = text[len(head):].strip()
    return text


class ChatProposer:
    """An agent that only proposes (`query_ids`, `sample`), answered by a chat endpoint at
    temperature 1; for APE, OPRO and GEPA. Samples are seeded from torch's RNG (the run's seed),
    so a server that honours `seed` (vLLM does) proposes the same instructions again."""

    trains = False

    def __init__(self, endpoint: ChatEndpoint, max_new_tokens: int = 100):
        if max_new_tokens < 1:
            raise UserError(f"agent.max_new_tokens={max_new_tokens}; expected >= 1")
        self.endpoint = endpoint
        self.max_new_tokens = max_new_tokens
        self.n_supported: bool | None = None  # whether the server answers `n` choices per request; None: not tried
        self.ledger = Ledger()  # the run's, attached by open_models (the endpoint counts the tokens)

    @classmethod
    def from_config(cls, agent_cfg) -> ChatProposer:
        return cls(ChatEndpoint.from_config("agent.chat", agent_cfg.chat, agent_cfg.model), agent_cfg.max_new_tokens)

    @property
    def usage(self) -> dict:
        return self.endpoint.usage

    def query_ids(self, user: str, prefix: str) -> ChatQuery:
        return ChatQuery(user, prefix)

    def messages(self, query: ChatQuery) -> list[dict]:
        content = f"{query.user.rstrip()}\n\n{query.prefix}" if query.prefix.strip() else query.user
        return [{"role": "user", "content": content}]

    def sample(self, query: ChatQuery, n: int, adapter: str = "base") -> Proposals:
        """n instructions at temperature 1 (top_p 1): one request with `n` choices where the
        server gives them, else n requests."""
        if adapter != "base":
            raise UserError(f"agent.backend=chat cannot sample the {adapter!r} adapter: a chat endpoint is not trained")
        with self.ledger.timed("generate"):
            return self._sample(query, n)

    def _sample(self, query: ChatQuery, n: int) -> Proposals:
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        kwargs = {"messages": self.messages(query), "temperature": 1.0, "top_p": 1.0, "max_tokens": self.max_new_tokens}
        answers: list[str] = []
        if n > 1 and self.n_supported is not False:
            try:
                response = self.endpoint.create(raise_bad_request=True, n=n, seed=seed, **kwargs)
            except self.endpoint.errors.BadRequestError as err:
                log.info("%s refused n=%d choices per request (%s); sampling one per request", self.endpoint.name, n,
                         one_line(err.message))
                self.n_supported = False
            else:
                answers = [c.message.content or "" for c in sorted(response.choices, key=lambda c: c.index)]
                self.n_supported = len(answers) >= n
        rest = range(len(answers), n)
        answers += self.endpoint.run_all(
            lambda i: self.endpoint.create(seed=(seed + i) % (2**31 - 1), **kwargs).choices[0].message.content or "", list(rest))
        return Proposals([strip_prefix(a, query.prefix) for a in answers[:n]])

    def close(self) -> None:
        self.endpoint.close()


# --- train.py's questions -----------------------------------------------------------------------
def check_chat_agent(cfg) -> None:
    """agent.backend=chat: only optimisers that sample an untrained agent (APE, OPRO, GEPA: their
    class says `samples_agent_only = True`) may use it; the rest train a local agent (a LoRA
    adapter, value heads) and are refused in one line, before anything loads."""
    from hydra.utils import get_class

    try:
        trainer = get_class(cfg.algo._target_)
    except (ImportError, AttributeError):
        return  # train.py reports an unimportable algo itself
    if trainer.needs_agent and not getattr(trainer, "samples_agent_only", False):
        raise UserError(f"algo={cfg.algo.name} trains the agent (a LoRA adapter on local weights), which "
                        "agent.backend=chat cannot; use agent.backend=hf or vllm, or a sampling-only algo (ape, opro, gepa)")
    ChatEndpoint.from_config("agent.chat", cfg.agent.chat, cfg.agent.model).close()  # bad settings fail here


def usage_report(scorer, agent) -> dict:
    """What a train run adds to results.json for chat endpoints: the scorer's report (target
    usage, unread answers) and the proposer's usage (`agent_usage`)."""
    out = dict(scorer.report())
    if isinstance(agent, ChatProposer):
        out["agent_usage"] = agent.usage
    return out
