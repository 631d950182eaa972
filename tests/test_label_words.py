"""Label words of any length, on a tiny random model: the sum of the label tokens' log-probs,
equal to a plain forward pass, the same as the one-token fast path on one-token labels, and
never decided by a shared first token; the server backend's request plan and sums."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from promptrl.errors import UserError
from promptrl.scoring import LabelTokens, label_tokens
from promptrl.scoring.hf import HFScorer
from promptrl.scoring.server import ServerScorer
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer

PROMPTS = ["", "classify the sentiment", "here are five pairs . the friend wrote an answer to every question and the instruction was"]
TEXTS = ["great", "the movie was really boring and the plot was bad", "i love it", "not good", "this film is fun , the acting is very good !"]
SHARED_FIRST = [" very bad", " very good", " not good"]  # two share " very"; lengths differ from one to the other


def make_task(words, texts=TEXTS):
    examples = [Example(id=f"t/{i}", text=t, label=i % len(words)) for i, t in enumerate(texts)]
    return Task(name="toy", kind="classification", template="{prompt} input : {input} sentiment :", label_words=words,
                metric="accuracy", manual_prompt="", train=examples, dev=examples, test=examples)


def plain_sum(model, tok, text: str, word: str) -> float:
    """log p(word | text) by one full forward pass over text + word, no cache, no batching."""
    ids = tok(text)["input_ids"]
    word_ids = tok.convert_tokens_to_ids(tok.tokenize(word))
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids + word_ids])).logits[0].float(), -1)
    return sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(word_ids))


def test_the_plan_shares_contexts_and_sums_each_labels_tokens():
    labels = LabelTokens(("a", "b", "c"), ((5, 7), (5, 8, 9), (6,)))
    assert labels.steps() == [((), [5, 6]), ((5,), [7, 8]), ((5, 8), [9])]
    step_lp = [torch.tensor([[-1.0, -2.0]]), torch.tensor([[-0.5, -0.25]]), torch.tensor([[-4.0]])]
    assert labels.combine(step_lp).tolist() == [[-1.5, -5.25, -2.0]]
    one = LabelTokens(("x", "y"), ((3,), (4,)))
    assert one.single and one.steps() == [((), [3, 4])]  # the fast path's one request


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("batch_tokens", [10_000, 40])  # one chunk, and many uneven chunks
def test_sequence_path_equals_the_fast_path_on_one_token_labels(prefix_reuse, batch_tokens):
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task([" bad", " good", " fun"])
    scorer = HFScorer(model, tok, task, "tiny", batch_tokens=batch_tokens, prefix_reuse=prefix_reuse)
    assert scorer.labels.single
    texts = [task.render(p, t) for p in PROMPTS for t in TEXTS]
    fast = scorer._next_token_logprobs(texts, group_size=len(TEXTS))
    general = scorer._sequence_logprobs(texts, group_size=len(TEXTS))
    torch.testing.assert_close(general, fast, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_multi_token_labels_score_the_sum_of_their_tokens(prefix_reuse):
    tok = make_tokenizer()
    model = make_model(len(tok), seed=3)
    task = make_task(SHARED_FIRST)
    scorer = HFScorer(model, tok, task, "tiny", batch_tokens=60, prefix_reuse=prefix_reuse)
    assert not scorer.labels.single and scorer.labels.first[0] == scorer.labels.first[1]
    scores = scorer.score(PROMPTS, task.test)
    assert scores.label_logprobs.shape == (len(PROMPTS), len(TEXTS), 3)
    for p, prompt in enumerate(PROMPTS):
        for n, ex in enumerate(task.test):
            want = torch.tensor([plain_sum(model, tok, task.render(prompt, ex.text), w) for w in SHARED_FIRST])
            torch.testing.assert_close(scores.label_logprobs[p, n], want, atol=1e-4, rtol=0)
    # the two labels that share " very" are told apart by their second token
    assert (scores.label_logprobs[..., 0] != scores.label_logprobs[..., 1]).all()
    # the reward's parts are over the per-label scores: a softmax over the three labels
    torch.testing.assert_close(scores.probs.sum(-1), torch.ones(len(PROMPTS), len(TEXTS)))
    assert scores.margin.shape == (len(PROMPTS),) and ((scores.margin >= -1) & (scores.margin <= 1)).all()


def test_a_text_longer_than_the_context_leaves_room_for_the_label():
    tok = make_tokenizer()
    model = make_model(len(tok))  # 1024 positions
    task = make_task(SHARED_FIRST)
    long_prompt = " ".join(["the movie was good and"] * 400)
    positions = []  # the highest position the decoder is asked to run
    model.get_decoder().register_forward_pre_hook(
        lambda m, args, kwargs: positions.append(int(kwargs["position_ids"].max()) if kwargs.get("position_ids") is not None
                                                 else kwargs["input_ids"].shape[1] - 1), with_kwargs=True)
    scores = HFScorer(model, tok, task, "tiny").score([long_prompt], task.test[:2])
    assert max(positions) < 1024  # a text + its label's tokens but the last, within the context
    for n, ex in enumerate(task.test[:2]):
        ids = tok(task.render(long_prompt, ex.text))["input_ids"]
        kept = ids[-(1024 - 1):]  # the longest label is 2 tokens: one of them is read inside the context
        for c, word in enumerate(SHARED_FIRST):
            word_ids = tok.convert_tokens_to_ids(tok.tokenize(word))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([kept + word_ids[:-1]])).logits[0].float(), -1)
            want = sum(logp[len(kept) - 1 + j, t].item() for j, t in enumerate(word_ids))
            assert scores.label_logprobs[0, n, c].item() == pytest.approx(want, abs=1e-4)


def test_label_words_that_cannot_be_told_apart_are_refused():
    tok = make_tokenizer()
    with pytest.raises(UserError, match=r"label words ' good' and 'good' are the same tokens \['good'\]"):
        label_tokens(tok, [" good", "good"], "tiny")
    with pytest.raises(UserError, match=r"label word ' zebra' has a token the target 'tiny' does not know"):
        label_tokens(tok, [" good", " zebra"], "tiny")
    with pytest.raises(UserError, match=r"label word '' has no tokens"):
        label_tokens(tok, [" good", ""], "tiny")


def test_server_scores_multi_token_labels_by_its_plan():
    """The fake server answers log p(token k of the request's list) = -(prompt length + k); each
    label's score must be the sum over its steps, one request per step and batch."""
    tok = make_tokenizer()
    task = make_task(SHARED_FIRST, texts=TEXTS[:3])
    labels = label_tokens(tok, SHARED_FIRST, "tiny")
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, body):
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply({"data": [{"id": "tiny", "max_model_len": 64}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ids = request["logprob_token_ids"]
            seen.append((len(request["prompt"]), ids))
            self.reply({"choices": [{"index": i, "logprobs": {"top_logprobs": [{f"token_id:{t}": -float(len(p) + k)
                                                                               for k, t in enumerate(ids)}]}}
                                    for i, p in enumerate(request["prompt"])]})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scorer = ServerScorer(tok, task, "tiny", f"http://127.0.0.1:{server.server_port}/v1", "tiny", concurrency=2, batch_size=2)
        got = scorer.score(["classify"], task.test).label_logprobs[0]
    finally:
        server.shutdown()
    plan = labels.steps()
    # the empty context (" very", " not"), then " very" -> (" bad", " good") and " not" -> " good";
    # each step is one request per batch of two texts
    assert len(plan) == 3 and sorted(ids for _, ids in seen) == sorted(ids for _, ids in plan for _ in range(2))
    for n, ex in enumerate(task.test):
        length = len(tok(task.render("classify", ex.text))["input_ids"])
        want = []
        for seq in labels.seqs:
            total = 0.0
            for j, token in enumerate(seq):
                nxt = dict(plan)[tuple(seq[:j])]
                total += -(length + j + nxt.index(token))
            want.append(total)
        assert got[n].tolist() == want
