import pytest
import torch

from promptrl.errors import UserError
from promptrl.scoring import ClassificationScores, fit_context, label_token_ids, reward
from promptrl.scoring.hf import HFScorer, common_prefix_length
from promptrl.tasks import Example, Task

from conftest import make_model, make_tokenizer

PROMPTS = ["", "classify the sentiment", "here are five pairs . the friend wrote an answer to every question and the instruction was"]
TEXTS = ["great", "the movie was really boring and the plot was bad", "i love it", "not good", "this film is fun , the acting is very good and the story is great !"]


def make_task(texts=TEXTS, template="{prompt} input : {input} sentiment :"):
    examples = [Example(id=f"t/{i}", text=t, label=i % 2) for i, t in enumerate(texts)]
    return Task(name="toy", kind="classification", template=template, label_words=[" bad", " good"],
                metric="accuracy", manual_prompt="", train=examples, dev=examples, test=examples)


@pytest.mark.parametrize("prefix_reuse", [True, False])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_tokens", [10_000, 40])  # one chunk, and many uneven chunks
def test_batched_scores_equal_one_at_a_time(padding_side, batch_tokens, prefix_reuse):
    tok = make_tokenizer(padding_side)
    model = make_model(len(tok))
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny", batch_tokens=batch_tokens, prefix_reuse=prefix_reuse)
    batched = scorer.score(PROMPTS, task.test)
    alone = HFScorer(model, tok, task, "tiny", batch_tokens=10_000, prefix_reuse=False)
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


def test_common_prefix_leaves_every_sequence_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 3, 4, 9]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert common_prefix_length([[7, 1], [8, 1]]) == 0


def test_prefix_reuse_runs_the_instruction_once_per_prompt():
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    seen = []
    hook = model.get_decoder().register_forward_hook(lambda m, a, kw, out: seen.append(kw["input_ids"].shape), with_kwargs=True)
    HFScorer(model, tok, task, "tiny", prefix_reuse=True).score(PROMPTS[2:], task.test)
    hook.remove()
    full = [len(tok(task.render(PROMPTS[2], t)).input_ids) for t in TEXTS]
    prompt_len = len(tok(PROMPTS[2] + " input :").input_ids)  # the text before the input words
    assert seen[0] == (1, prompt_len)  # one prefix pass of batch 1 ...
    assert sum(shape[0] for shape in seen[1:]) == len(TEXTS)  # ... then only the inputs
    assert max(shape[1] for shape in seen[1:]) == max(full) - prompt_len


def test_chunks_bound_tokens_and_padding():
    tok = make_tokenizer()
    scorer = HFScorer(make_model(len(tok)), tok, make_task(), "tiny", batch_tokens=100)
    lengths = [3, 40, 12, 10, 38, 5, 11, 39, 4, 30]
    chunks = scorer._chunks(lengths, prefix_width=10)
    assert sorted(i for c in chunks for i in c) == list(range(len(lengths)))
    for c in chunks:
        width = max(lengths[i] for i in c)
        assert len(c) == 1 or len(c) * (10 + width) <= 100
        assert all(lengths[i] * 1.25 >= width for i in c)
    # 3 x (10 + 40) > 100 ends the first chunk; 30 is too short to pad to 38, 5 to pad to 10 ...
    assert [[lengths[i] for i in c] for c in chunks] == [[40, 39], [38], [30], [12, 11, 10], [5, 4], [3]]


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
    torch.testing.assert_close(reward(s, 10, 0.1), torch.tensor([10 * 2 / 3 + 0.1 * m0, 10 * 2 / 3 + 0.1 * m1]))


def test_multi_token_label_word_is_rejected_with_its_pieces():
    tok = make_tokenizer()
    with pytest.raises(UserError, match=r"label word ' very good' is 2 tokens \['very', 'good'\]"):
        label_token_ids(tok, [" bad", " very good"], "tiny")


def test_degenerate_prompts_are_scored_not_crashed_on():
    """Empty, whitespace-only, template-marker and placeholder-looking prompts are scored as-is."""
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny")
    odd = ["", "   \n\t ", "input : great sentiment : good", "{input} {prompt} {0} }{", "<eos> <assistant>"]
    scores = scorer.score(odd, task.test)
    assert torch.isfinite(scores.label_logprobs).all()
    # whitespace renders exactly like the empty prompt
    torch.testing.assert_close(scores.label_logprobs[1], scores.label_logprobs[0], atol=1e-5, rtol=0)
    assert task.render("{input}", "x") == "{input} input : x sentiment :"  # no second substitution


def test_prompt_longer_than_the_context_keeps_its_end():
    tok = make_tokenizer()
    model = make_model(len(tok))  # context of 1024 positions
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny")
    long_prompt = " ".join(["the movie was good and"] * 400)  # 2000 words
    scores = scorer.score([long_prompt, "classify"], task.test)
    seqs = fit_context(tok([task.render(long_prompt, "great")])["input_ids"], model.config.max_position_embeddings)
    assert len(seqs[0]) == 1024 and tok.decode(seqs[0]).endswith("input : great sentiment :")
    # the scorer scored exactly the text's last 1024 tokens (a one-token label is read, not written)
    labels = tok.convert_tokens_to_ids(["bad", "good"])
    for p, prompt in enumerate([long_prompt, "classify"]):
        for n, ex in enumerate(task.test):
            kept = tok(task.render(prompt, ex.text))["input_ids"][-1024:]
            with torch.no_grad():
                want = torch.log_softmax(model(torch.tensor([kept])).logits[0, -1].float(), -1)[labels]
            torch.testing.assert_close(scores.label_logprobs[p, n], want, atol=1e-4, rtol=0)


def cached_scorer(tmp_path, model, tok, task):
    from promptrl.scoring import attach_cache

    scorer = HFScorer(model, tok, task, "tiny")
    attach_cache(scorer, tmp_path)
    return scorer


def count_forwards(model):
    calls = {"n": 0}
    model.get_decoder().register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    return calls


def test_second_identical_scoring_runs_no_forward_pass(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    first = cached_scorer(tmp_path, model, tok, task)
    want = first.score(PROMPTS, task.test).label_logprobs
    assert first.cache_misses == len(PROMPTS) * len(TEXTS) and first.cache_hits == 0
    again = cached_scorer(tmp_path, model, tok, task)  # a new run: a new scorer, the same cache directory
    forwards = count_forwards(model)
    got = again.score(PROMPTS, task.test).label_logprobs
    assert forwards["n"] == 0 and again.cache_hits == len(PROMPTS) * len(TEXTS) and again.cache_misses == 0
    assert torch.equal(got, want) and again.calls == first.calls


def test_partly_cached_prompts_match_an_uncached_scorer(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok))
    task = make_task()
    scorer = cached_scorer(tmp_path, model, tok, task)
    scorer.score(PROMPTS[:2], task.test[:3])  # some prompts fully, others partly, one not at all
    forwards = count_forwards(model)
    got = scorer.score(PROMPTS, task.test).label_logprobs
    want = HFScorer(model, tok, task, "tiny").score(PROMPTS, task.test).label_logprobs
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert scorer.cache_hits == 2 * 3 and scorer.cache_misses == 2 * 3 + (3 * 5 - 2 * 3)
    assert forwards["n"] > 0


def test_cache_keys_on_template_and_label_words(tmp_path):
    tok = make_tokenizer()
    model = make_model(len(tok))
    cached_scorer(tmp_path, model, tok, make_task()).score(PROMPTS, make_task().test)
    other = cached_scorer(tmp_path, model, tok, make_task(template="{prompt} review : {input} sentiment :"))
    other.score(PROMPTS, other.task.test)
    assert other.cache_hits == 0


def test_server_client_retries_transient_errors_then_scores():
    """The server backend's client: 503s are retried with backoff, then the label log-probs are
    read from vLLM's response format (the real server is tested in test_vllm.py)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from promptrl.scoring.server import ServerScorer

    tok = make_tokenizer()
    task = make_task()
    label_ids = label_token_ids(tok, task.label_words, "tiny")
    seen = {"completions": 0, "prompts": []}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            self.reply(200, {"data": [{"id": "tiny", "max_model_len": 64}]})

        def do_POST(self):
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen["completions"] += 1
            if seen["completions"] <= 2:
                return self.reply(503, {"error": "warming up"})
            assert request["logprob_token_ids"] == label_ids and request["max_tokens"] == 1
            seen["prompts"] += request["prompt"]
            choices = [{"index": i, "logprobs": {"top_logprobs": [{f"token_id:{t}": -float(len(p) + k)
                                                                  for k, t in enumerate(label_ids)}]}}
                       for i, p in enumerate(request["prompt"])]
            self.reply(200, {"choices": choices})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        scorer = ServerScorer(tok, task, "tiny", f"http://127.0.0.1:{server.server_port}/v1", "tiny",
                              concurrency=1, batch_size=3, backoff_s=0.01)
        scores = scorer.score(["classify"], task.test)
    finally:
        server.shutdown()
    assert scorer.max_len == 64
    assert seen["completions"] == 2 + 2  # two refused, then 5 texts in batches of 3
    lengths = torch.tensor([len(tok(task.render("classify", e.text)).input_ids) for e in task.test], dtype=torch.float)
    torch.testing.assert_close(scores.label_logprobs[0], -torch.stack([lengths, lengths + 1], dim=1))
    assert seen["prompts"] == [tok(task.render("classify", e.text)).input_ids for e in task.test]


def test_greedy_generation_batched_equals_one_at_a_time():
    tok = make_tokenizer("left")
    model = make_model(len(tok), seed=1)
    task = make_task()
    scorer = HFScorer(model, tok, task, "tiny", batch_tokens=60)  # several chunks
    texts = [task.render(p, t) for p in PROMPTS for t in TEXTS[:3]]
    batched = scorer.generate(texts, max_new_tokens=5)
    alone = [scorer.generate([t], max_new_tokens=5)[0] for t in texts]
    assert batched == alone and any(batched)
    # stop strings cut the continuation before the stop
    word = batched[0].split()[1] if len(batched[0].split()) > 1 else batched[0].split()[0]
    cut = scorer.generate(texts[:1], max_new_tokens=5, stop=[word])[0]
    assert cut == batched[0][:batched[0].find(word)].strip()
