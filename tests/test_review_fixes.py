"""Regression tests for the correctness fixes of the 69b4b37 review: each failed before its fix."""

import math

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_baselines import QualityScorer, ScriptedAgent, cfg
from test_scoring import cached_scorer, make_task

from promptrl.agent import POLICY, Agent
from promptrl.algos.ape import APE
from promptrl.algos.appo import APPOTrainer
from promptrl.algos.tte import TTETrainer
from promptrl.cli import CONF_DIR
from promptrl.config import APEConfig, TTEConfig
from promptrl.scoring import cut_at_stop
from promptrl.scoring.hf import HFScorer, StopAfterText
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer
from test_agent_trainer import StubScorer, algo_cfg, make_agent, toy_task


def test_cache_serves_an_example_list_that_holds_the_same_input_twice(tmp_path):
    """bbii_sports_understanding has 13 duplicate test inputs: with every distinct input cached,
    the partial-hit branch used to score an empty list and crash."""
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task(["great", "i love it", "great", "not good", "i love it"])
    prompts = ["classify the sentiment", ""]
    first = cached_scorer(tmp_path, model, tok, task).score(prompts, task.test).label_logprobs
    again = cached_scorer(tmp_path, model, tok, task)
    second = again.score(prompts, task.test).label_logprobs
    assert torch.equal(first, second)
    assert again.cache_hits == 2 * 5 and again.cache_misses == 0


def test_an_answer_that_starts_with_a_newline_is_read_after_it():
    assert cut_at_stop("\nParis\nFrance", ["\n"]) == "Paris"
    assert cut_at_stop("  \n\n Paris.\n", ["\n"]) == "Paris."
    assert cut_at_stop("\n\n", ["\n"]) == ""


def test_hf_stop_criterion_reads_the_answer_as_cut_at_stop_does():
    from promptrl.scoring import stopped_after_text

    assert not stopped_after_text("\n", ["\n"]) and not stopped_after_text(" \n\n", ["\n"])
    assert stopped_after_text("\nParis\n", ["\n"]) and not stopped_after_text("\nParis", ["\n"])
    tok = make_tokenizer()
    prompt = tok("the movie was", add_special_tokens=False)["input_ids"]
    stop = StopAfterText(tok, (".",), start=len(prompt))
    row = lambda words: torch.tensor([prompt + tok(words, add_special_tokens=False)["input_ids"]])
    assert not stop(row("great"), None).item()  # the prompt's own words are not read
    assert stop(row("great ."), None).item()


def test_demonstrations_come_from_train_not_dev():
    train = [Example(id=f"train/{i}", text=t, label=i % 2) for i, t in enumerate(["great movie", "terrible film", "i love it", "boring plot"])]
    dev = [Example(id=f"dev/{i}", text=t, label=i % 2) for i, t in enumerate(["fun story", "bad acting"])]
    task = Task(name="toy", kind="classification", template="{prompt} input : {input} sentiment :",
                label_words=[" bad", " good"], metric="accuracy", manual_prompt="", train=train, dev=dev, test=dev)
    agent = make_agent()
    trainer = APPOTrainer(algo_cfg(num_demos=4), task, StubScorer(task), agent, None)
    text = agent.tokenizer.decode(trainer.make_query())
    assert all(ex.text in text for ex in train) and not any(ex.text in text for ex in dev)
    tte = TTETrainer(OmegaConf.merge(OmegaConf.structured(TTEConfig), {"num_demos": 3}), task, StubScorer(task), agent, None)
    message = tte.tte_message(train[0])
    assert all(ex.text in message for ex in train) and "fun story" not in message


def test_ape_ucb_scores_every_candidate_and_pulls_the_good_ones_again():
    """It used to score the first ucb_rounds x ucb_prompts_per_round candidates once each."""
    task = toy_task()
    candidates = [f"p{i}" for i in range(30)]
    scorer = QualityScorer(task, {p: i / 29 for i, p in enumerate(candidates)})
    ape = APE(cfg(APEConfig, num_candidates=30, prompts_per_step=10, evaluation="ucb", ucb_rounds=5,
                  ucb_prompts_per_round=0.34, ucb_examples_per_round=4), task, scorer, ScriptedAgent(candidates), None)
    ape.run()
    pulls = {p: ape.stats[p].get("pulls", 0) for p in candidates}
    assert min(pulls.values()) >= 1  # three rounds of 10 cover all 30
    assert sum(pulls[p] >= 2 for p in candidates[15:]) > sum(pulls[p] >= 2 for p in candidates[:15])


def test_paper_experiments_use_the_papers_sst2_verbalizer():
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        paper = compose("train", overrides=["experiment=paper_table1"])
        demo = compose("train", overrides=["experiment=cpu_demo"])
    assert paper.task.name == "sst2_paper" and list(paper.task.label_words) == [" no", " yes"]
    assert '"yes" if the sentiment' in paper.task.manual_prompt
    assert list(demo.task.label_words) == [" negative", " positive"]


def test_no_anchor_check_after_the_last_epoch():
    task = toy_task()
    scorer = StubScorer(task)
    trainer = APPOTrainer(algo_cfg(epochs=2, batch_size=8, update_term=1, prompts_per_step=2), task, scorer, make_agent(), None)
    trainer.run()
    assert [a["epoch"] for a in trainer.anchor_history] == [0]  # after epoch 0; none after epoch 1
    assert scorer.calls == 2 * 2 * 8 + trainer.anchor_check_calls()  # two steps + one check


def test_tte_keeps_its_last_check_because_its_policy_writes_the_test_prompts():
    task = toy_task()
    tte = TTETrainer(OmegaConf.merge(OmegaConf.structured(TTEConfig), {"epochs": 1}), task, StubScorer(task), make_agent(), None)
    appo = APPOTrainer(algo_cfg(epochs=1), task, StubScorer(task), make_agent(), None)
    tte.epoch = appo.epoch = 1  # both finished
    assert tte.anchor_check_matters() and not appo.anchor_check_matters()


def test_policy_entropy_is_logged_per_step():
    task = toy_task()
    agent = make_agent()
    trainer = APPOTrainer(algo_cfg(epochs=1, batch_size=8), task, StubScorer(task, n_good=1), agent, None)
    row = trainer.train_step()
    vocab = agent.model.get_base_model().config.vocab_size
    assert 0 < row["entropy"] <= math.log(vocab) + 1e-4
    # the same number from the logits directly
    samples = agent.sample(trainer.make_query(), 2, POLICY)
    with torch.no_grad():
        agent.evaluate_actions(samples.query, samples.responses, POLICY)
        logits = agent.model(input_ids=torch.cat([samples.query, samples.responses[0]]).unsqueeze(0)).logits[0].float()
    q = len(samples.query)
    logp = torch.log_softmax(logits[q - 1:q - 1 + samples.responses.shape[1]], -1)
    assert torch.allclose(agent.last_entropy[0], -(logp.exp() * logp).sum(-1), atol=1e-4)


def test_agent_stops_at_the_chat_templates_end_of_turn_token():
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    agent = Agent(make_model(len(tok)), tok, lora_r=4, lora_alpha=8, lora_dropout=0.0)
    assert tok.convert_tokens_to_ids("<end_of_turn>") in agent.eos_ids and tok.eos_token_id in agent.eos_ids


def test_scorer_and_agent_read_softcapped_logits_as_the_model_does():
    """Gemma 2/3 soft-cap their logits after the output layer; code that applies the output
    layer itself must do the same, or it scores a different distribution."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from promptrl.models import check_output_logits, output_logits

    tok = make_tokenizer()
    torch.manual_seed(0)
    config = Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=2.0,
                          pad_token_id=1, eos_token_id=2, bos_token_id=None)
    model = Gemma2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)  # large logits, so the cap matters
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        want = model(input_ids=ids).logits[0, -1]
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state[0, -1]
        assert torch.allclose(output_logits(model, hidden), want, atol=1e-5)
        assert not torch.allclose(model.get_output_embeddings()(hidden), want, atol=1e-2)
    check_output_logits(model, "gemma2-tiny")  # raises for a model it cannot reproduce
    task = make_task()
    scorer = HFScorer(model, tok, task, "gemma2-tiny")
    got = scorer.score(["classify the sentiment"], task.test[:1]).label_logprobs[0, 0]
    text_ids = tok(task.render("classify the sentiment", task.test[0].text))["input_ids"]
    with torch.no_grad():
        full = torch.log_softmax(model(input_ids=torch.tensor([text_ids])).logits[0, -1].float(), -1)
    assert torch.allclose(got, full[scorer.label_ids], atol=1e-4)
