"""Bad inputs, as a user types them: each ends the run with exactly one line on stderr that names
the bad value and what would be accepted, exit code 2, and no traceback."""

from pathlib import Path

import pytest

from conftest import SHARED_DATA, make_model, make_tokenizer, run_cli

SST2_HEADER = "sentence\tlabel\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def data_dir(tmp: Path, train: str) -> Path:
    """An LM-BFF-shaped data dir for sst2 whose train file is `train` and the rest valid."""
    root = tmp / "data" / "fsc" / "sst-2"
    good = SST2_HEADER + "a fine film\t1\na dull film\t0\n"
    write(root / "16-13" / "train.tsv", train)
    write(root / "16-13" / "dev.tsv", good)
    write(root / "test.tsv", good)
    return tmp / "data"


def no_chat_template_model(tmp: Path) -> Path:
    tok = make_tokenizer()
    tok.chat_template = None
    make_model(len(tok)).save_pretrained(tmp / "plain-lm")
    tok.save_pretrained(tmp / "plain-lm")
    return tmp / "plain-lm"


# (id, command and overrides, substrings of the error line); "<tmp>" and "{data}" are filled in.
CASES = [
    ("unknown group option", ["train", "task=sst7"], ["task='sst7' is not a known option (did you mean sst5?); expected one of: agnews", "ii_* (24 options)"]),
    ("unknown algo in a sweep", ["train", "-m", "algo=appo,apo"], ["algo='apo' is not a known option", "opro"]),
    ("misspelled key", ["eval", "task.lable_words=[a,b]"], ["'task.lable_words' is not a setting (did you mean task.label_words?)"]),
    ("key of another algo", ["train", "algo=ape", "algo.update_term=3"], ["'algo.update_term' is not a setting", "num_candidates"]),
    ("wrong type", ["eval", "target.batch_tokens=many"], ["target.batch_tokens: Value 'many'", "Integer"]),
    ("wrong bool", ["train", "logger.wandb=maybe"], ["logger.wandb: Value 'maybe' is not a valid bool"]),
    ("sweep without -m", ["train", "seed=0,1"], ["Ambiguous value for argument 'seed=0,1'", "--multirun"]),
    ("label word without tokens", ["eval", "task.label_words=['',' positive']"],
     ["label word '' has no tokens for target 'smollm2-135m'"]),
    ("duplicate label words", ["eval", "task.label_words=[' good',' good']"], ["has duplicates; each class needs its own word"]),
    ("too few label words", ["eval", "task.label_words=[' good']"], ["needs at least two words"]),
    ("template without input", ["eval", "task.template='{prompt} Output:'"], ["must contain both '{prompt}' and '{input}'"]),
    ("empty data file", ["eval", "task.data_dir=<data:empty>"], ["train.tsv is empty; expected a header line and at least one example"]),
    ("missing column", ["eval", "task.data_dir=<data:nocolumn>"], ["has no column 'sentence'; its columns are ['text', 'label']"]),
    ("label out of range", ["eval", "task.data_dir=<data:badlabel>"], ["label 7 is out of range; expected 0..1"]),
    ("data dir missing", ["eval", "task.data_dir=/no/such/dir"], ["data dir '/no/such/dir' (task.data_dir / PROMPTRL_DATA) does not exist"]),
    ("prompt file missing", ["eval", "prompt_file=/no/such/prompt.txt"], ["prompt_file '/no/such/prompt.txt' does not exist"]),
    ("prompt file empty", ["eval", "prompt_file=<tmp>/empty.txt"], ["empty.txt' is empty; expected the prompt text"]),
    ("prompt and prompt file", ["eval", "prompt=hi", "prompt_file=<tmp>/empty.txt"], ["give either prompt= or prompt_file=, not both"]),
    ("test cap not positive", ["eval", "task.max_test_examples=0"], ["task.max_test_examples=0; expected a positive number or null"]),
    ("budget zero", ["train", "budget.target_calls=0"], ["budget.target_calls=0; expected a positive number or null"]),
    ("negative checkpoint period", ["train", "checkpoint_every=-1"], ["checkpoint_every=-1; expected >= 0"]),
    ("threshold out of range", ["train", "algo.update_threshold=-0.5"], ["algo.update_threshold=-0.5; expected >= 0"]),
    ("bad KL reference", ["train", "algo.reference=ema"], ["algo.reference='ema'; expected one of: anchor, base, previous"]),
    ("bad APE evaluation", ["train", "algo=ape", "algo.evaluation=thompson"], ["algo.evaluation='thompson'; expected one of: full, ucb"]),
    ("queue size zero", ["train", "algo=opro", "algo.queue_size=0"], ["algo.queue_size=0; expected an integer >= 1"]),
    ("resume path missing", ["train", "resume=/no/such/run"], ["resume='/no/such/run' is not a run directory with checkpoints/"]),
    ("unknown backend", ["eval", "target.backend=tpu"], ["unknown target.backend 'tpu'; expected one of: hf, vllm, server"]),
    ("server not reachable", ["eval", "target.backend=server", "target.server.url=http://127.0.0.1:9/v1",
                              "target.server.max_retries=0"],
     ["target server http://127.0.0.1:9/v1/models failed after 1 attempts (ConnectError", "check target.server.url"]),
    ("unknown agent backend", ["train", "agent.backend=tgi"], ["agent.backend='tgi'; expected one of: hf, vllm"]),
    ("LoRA rank vLLM cannot serve", ["train", "agent.backend=vllm", "agent.lora_r=1024"],
     ["agent.lora_r=1024 is above the largest LoRA rank vLLM serves (512)", "agent.backend=hf"]),
    ("unknown dtype", ["eval", "target.dtype=float8"], ["unknown dtype 'float8'; expected one of: auto, float32"]),
    ("cuda without a GPU", ["eval", "target.device=cuda"], ["device 'cuda' requested but no CUDA GPU is available"]),
    ("agent without chat template", ["train", "agent.model=<plain_lm>", "agent.gguf_package=null", "agent.name=plain"],
     ["the agent's tokenizer has no chat template", "agent.no_chat_template=plain"]),
    ("bad no_chat_template value", ["train", "agent.no_chat_template=maybe"], ["agent.no_chat_template='maybe'; expected one of: error, plain"]),
    ("unknown command", ["tune"], ["unknown command 'tune'; expected one of: train, eval, predict, check, report"]),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    # The cases that get past the data (label words, the target, the agent) read SST-2 from the
    # shared data: without it they would test the wrong error, so they fail loudly, not skip.
    if not (SHARED_DATA / "fsc").is_dir():
        pytest.fail(f"the bad-input cases need the shared benchmark data; none at {SHARED_DATA} (set PROMPTRL_DATA)")
    tmp = tmp_path_factory.mktemp("bad")
    write(tmp / "empty.txt", "  \n")
    return {
        "tmp": str(tmp),
        "data:empty": str(data_dir(tmp / "empty", "")),
        "data:nocolumn": str(data_dir(tmp / "nocol", "text\tlabel\nfine\t1\n")),
        "data:badlabel": str(data_dir(tmp / "badlabel", SST2_HEADER + "fine\t1\nodd\t7\n")),
        "plain_lm": str(no_chat_template_model(tmp)),
        "shared": str(SHARED_DATA),
    }


@pytest.mark.parametrize("name, args, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(name, args, needles, files, tmp_path):
    for key, path in files.items():
        args = [a.replace(f"<{key}>", path) for a in args]
    extra = [f"hydra.run.dir={tmp_path}"] if args[0] in ("train", "eval") else []
    r = run_cli(*args, *extra, data=files["shared"], env={"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}, timeout=300)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    errors = [l for l in r.stderr.splitlines() if l.startswith("promptrl: error:")]
    assert len(errors) == 1, r.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout


def test_verbose_shows_the_traceback(tmp_path):
    r = run_cli("eval", "--verbose", "task.data_dir=/no/such/dir", f"hydra.run.dir={tmp_path}", timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr

