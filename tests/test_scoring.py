import pytest
import torch

from promptrl.errors import UserError
from promptrl.scoring import ClassificationScores
from promptrl.scoring.hf import HFScorer, label_token_ids
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer

PROMPTS = ["", "classify the sentiment", "here are five pairs . the friend wrote an answer to every question and the instruction was"]
TEXTS = ["great", "the movie was really boring and the plot was bad", "i love it", "not good", "this film is fun , the acting is very good and the story is great !"]


def make_task(texts=TEXTS, template="{prompt} input : {input} sentiment :"):
    examples = [Example(id=f"t/{i}", text=t, label=i % 2) for i, t in enumerate(texts)]
    return Task(name="toy", kind="classification", template=template, label_words=[" bad", " good"],
                metric="accuracy", manual_prompt="", train=examples, dev=examples, test=examples)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_tokens", [10_000, 40])  # one chunk, and many uneven chunks
def test_batched_scores_equal_one_at_a_time(padding_side, batch_tokens):
    tok = make_tokenizer(padding_side)
    model = make_model(len(tok))
    task = make_task()
    batched = HFScorer(model, tok, task, "tiny", batch_tokens=batch_tokens).score(PROMPTS, task.test)
    alone = HFScorer(model, tok, task, "tiny", batch_tokens=10_000)
    assert batched.label_logprobs.shape == (len(PROMPTS), len(TEXTS), 2)
    for p, prompt in enumerate(PROMPTS):
        for n, ex in enumerate(task.test):
            single = alone.score([prompt], [ex]).label_logprobs[0, 0]
            torch.testing.assert_close(batched.label_logprobs[p, n], single, atol=1e-4, rtol=0)


def test_scores_are_the_label_word_logprobs_of_a_plain_forward():
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    scores = HFScorer(model, tok, task, "tiny").score(["classify"], task.test[:1])
    text = task.render("classify", task.test[0].text)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, -1].float(), -1)
    want = logp[[tok.convert_tokens_to_ids("bad"), tok.convert_tokens_to_ids("good")]]
    torch.testing.assert_close(scores.label_logprobs[0, 0], want, atol=1e-5, rtol=0)


def test_counts_calls_and_tokens():
    tok = make_tokenizer()
    task = make_task()
    scorer = HFScorer(make_model(len(tok)), tok, task, "tiny")
    scorer.score(PROMPTS[:2], task.test)
    assert scorer.calls == 2 * len(TEXTS)
    assert scorer.tokens == sum(len(tok(task.render(p, e.text)).input_ids) for p in PROMPTS[:2] for e in task.test)


def test_accuracy_and_margin_by_hand():
    # two prompts, three examples, three classes; gold labels 0, 2, 1
    probs = torch.tensor([
        [[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]],  # right, right, wrong
        [[0.2, 0.5, 0.3], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]],  # wrong, right, right
    ])
    s = ClassificationScores(label_logprobs=probs.log() - 1.5, labels=torch.tensor([0, 2, 1]))
    torch.testing.assert_close(s.probs, probs)
    torch.testing.assert_close(s.accuracy, torch.tensor([2 / 3, 2 / 3]))
    m0 = ((0.7 - 0.2) + (0.6 - 0.3) + (0.4 - 0.5)) / 3
    m1 = ((0.2 - 0.5) + (0.4 - 0.3) + (0.8 - 0.1)) / 3
    torch.testing.assert_close(s.margin, torch.tensor([m0, m1]))


def test_multi_token_label_word_is_rejected_with_its_pieces():
    tok = make_tokenizer()
    with pytest.raises(UserError, match=r"label word ' very good' is 2 tokens \['very', 'good'\]"):
        label_token_ids(tok, [" bad", " very good"], "tiny")
