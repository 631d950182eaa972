"""Device discipline without a GPU: the agent, the PPO update, the scorer and checkpoints run
with the model on a stand-in device (tests/device_proxy.py), where any tensor the code makes
without `device=` and mixes with the model's fails as it would on CUDA."""

import pytest
import torch

from promptrl.agent import ANCHOR, POLICY, Agent
from promptrl.algos.appo import APPOTrainer
from promptrl.scoring.hf import HFScorer

from conftest import make_model, make_tokenizer, run_cli
from device_proxy import PROXY, DeviceMismatch, on_proxy, proxy_device, to_proxy
from test_agent_trainer import algo_cfg, toy_task


def proxy_agent(seed=0, value_heads=True):
    tok = make_tokenizer()
    torch.manual_seed(seed)
    base = to_proxy(make_model(len(tok), seed=seed))  # what load_model's model.to(device) does
    return Agent(base, tok, lora_r=4, lora_alpha=8, lora_dropout=0.0, max_new_tokens=6, value_heads=value_heads)


def all_tensors_on_proxy(module) -> list[str]:
    return [n for n, t in [*module.named_parameters(), *module.named_buffers()] if not on_proxy(t)]


def test_the_proxy_device_catches_a_cpu_tensor_meeting_the_model():
    with proxy_device():
        model = to_proxy(make_model(len(make_tokenizer())))
        states = model.model(input_ids=torch.tensor([[3, 4, 5]], device=PROXY)).last_hidden_state
        assert on_proxy(states)
        with pytest.raises(DeviceMismatch, match="same device"):
            torch.nn.Linear(32, 1)(states)  # a head built on the CPU default


def test_agent_adapters_and_value_heads_follow_the_model_device():
    with proxy_device():
        agent = proxy_agent()
        assert all_tensors_on_proxy(agent) == []
        assert all(p.dtype == torch.float32 for p in agent.value_heads.parameters())


def test_sampling_and_ppo_update_run_on_the_model_device(tmp_path):
    """One APPO step end to end (sample, score on a target that is also on the device, PPO
    update, anchor check), then a checkpoint saved and loaded into a fresh agent."""
    task = toy_task()
    with proxy_device():
        agent = proxy_agent()
        tok = make_tokenizer()
        scorer = HFScorer(to_proxy(make_model(len(tok), seed=1)), tok, task, "proxy-target")
        trainer = APPOTrainer(algo_cfg(epochs=1, batch_size=8, update_term=1), task, scorer, agent, tmp_path,
                              checkpoint_every=1)
        trainer.run()
        assert trainer.step == 1 and len(trainer.anchor_history) == 0  # the check after the last epoch is skipped
        trainer.anchor_check()
        state = trainer.optimizer.state
        assert state and all(on_proxy(v) for s in state.values() for k, v in s.items() if k != "step")
        assert all_tensors_on_proxy(agent) == []
        trainer.save()

        fresh = APPOTrainer(algo_cfg(epochs=1, batch_size=8, update_term=1), task, scorer, proxy_agent(seed=5),
                            tmp_path)
        fresh.resume()
        assert all_tensors_on_proxy(fresh.agent) == []
        for key, p in agent.lora_params(POLICY).items():
            assert torch.equal(fresh.agent.lora_params(POLICY)[key].cpu(), p.cpu())
        assert all(on_proxy(v) for s in fresh.optimizer.state.values() for k, v in s.items() if k != "step")
        fresh.agent.sample(fresh.make_query(), 2, ANCHOR)


@pytest.mark.parametrize("advantage, kl_in", [("grpo", "loss"), ("drgrpo", "reward")])
def test_a_group_rl_step_runs_on_the_model_device(tmp_path, advantage, kl_in):
    """A grpo step (two groups of different queries, one forward and backward, the reference
    pass, group advantages, the non-finite check) with the model on the device, no value head,
    then a checkpoint loaded into a fresh agent."""
    task = toy_task()
    cfg = algo_cfg(epochs=1, batch_size=8, update_term=1, advantage=advantage, kl_in=kl_in, groups_per_step=2,
                   ppo_epochs=1, mini_batch_size=None)
    with proxy_device():
        agent = proxy_agent(value_heads=False)
        tok = make_tokenizer()
        scorer = HFScorer(to_proxy(make_model(len(tok), seed=1)), tok, task, "proxy-target")
        trainer = APPOTrainer(cfg, task, scorer, agent, tmp_path, checkpoint_every=1)
        with torch.no_grad():  # policy != anchor, so the KL terms are not zero
            for p in agent.lora_params(POLICY).values():
                p.add_(0.1)
        before = {k: v.cpu().clone() for k, v in agent.lora_params(POLICY).items()}
        row = trainer.train_step()
        assert row["skipped_updates"] == 0 and row["kl"] != 0 and len(row["prompts"]) == 6
        assert any(not torch.equal(p.cpu(), before[k]) for k, p in agent.lora_params(POLICY).items())
        state = trainer.optimizer.state
        assert state and all(on_proxy(v) for s in state.values() for k, v in s.items() if k != "step")
        assert all_tensors_on_proxy(agent) == [] and agent.value_heads is None
        trainer.anchor_check()
        trainer.save()
        fresh = APPOTrainer(cfg, task, scorer, proxy_agent(seed=5, value_heads=False), tmp_path)
        fresh.resume()
        assert all_tensors_on_proxy(fresh.agent) == []
        for key, p in agent.lora_params(POLICY).items():
            assert torch.equal(fresh.agent.lora_params(POLICY)[key].cpu(), p.cpu())


def test_checkpoints_hold_cpu_tensors_so_they_resume_on_any_device(tmp_path):
    with proxy_device():
        task = toy_task()
        agent = proxy_agent()
        tok = make_tokenizer()
        scorer = HFScorer(to_proxy(make_model(len(tok), seed=1)), tok, task, "proxy-target")
        trainer = APPOTrainer(algo_cfg(epochs=1, batch_size=8), task, scorer, agent, tmp_path, checkpoint_every=1)
        trainer.run()
    path = sorted((tmp_path / "checkpoints").glob("ckpt-*.pt"))[-1]
    state = torch.load(path, weights_only=False)  # no map_location: loadable on a CPU-only machine
    tensors = [t for t in _leaves(state) if isinstance(t, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" and not on_proxy(t) for t in tensors)


def test_hf_scorer_scores_the_same_on_the_model_device():
    task = toy_task()
    tok = make_tokenizer()
    plain = HFScorer(make_model(len(tok), seed=1), tok, task, "cpu")
    want = plain.score(["classify the review", "the sentiment"], task.test).label_logprobs
    with proxy_device():
        scorer = HFScorer(to_proxy(make_model(len(tok), seed=1)), tok, task, "proxy")
        got = scorer.score(["classify the review", "the sentiment"], task.test).label_logprobs
        answers = scorer.generate(["the movie was", "i love"], max_new_tokens=4, stop=["."])
    assert not on_proxy(got) and torch.allclose(got, want, atol=1e-6)
    assert answers == plain.generate(["the movie was", "i love"], max_new_tokens=4, stop=["."])


def _leaves(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _leaves(v)
    else:
        yield tree


def test_gpu_smoke_script_composes_and_refuses_a_machine_without_cuda():
    import subprocess
    import sys
    from pathlib import Path

    scripts = Path(__file__).resolve().parent.parent / "scripts"
    sys.path.insert(0, str(scripts))
    import gpu_smoke

    r = run_cli("train", *gpu_smoke.TRAIN, "--cfg", "job")
    assert r.returncode == 0 and "device: cuda" in r.stdout, r.stderr[-2000:]
    if not torch.cuda.is_available():
        r = subprocess.run([sys.executable, str(scripts / "gpu_smoke.py")], capture_output=True, text=True)
        assert r.returncode == 1 and "no CUDA device is visible" in r.stderr


AMD = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f {}\n"
INTEL = "vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f {}\n"


@pytest.mark.parametrize("cpuinfo, fast", [
    (AMD.format("avx512_bf16"), True),  # Zen 4: bf16 2-3x fp32
    (INTEL.format("avx512_bf16 amx_bf16 amx_tile"), True),  # Sapphire Rapids with AMX
    (INTEL.format("avx512_bf16 avx512_fp16"), False),  # AMX hidden: bf16 measured 0.6x fp32
    (AMD.format(""), False), (INTEL.format(""), False), ("", False),
])
def test_auto_dtype_on_a_cpu_is_bf16_only_where_bf16_measured_faster(monkeypatch, cpuinfo, fast):
    from promptrl import models

    assert models.cpu_bf16_is_fast(cpuinfo) is fast
    monkeypatch.setattr(models, "cpu_bf16_is_fast", lambda: fast)
    assert models.resolve_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if fast else torch.float32)
    assert models.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert models.resolve_dtype("float32", torch.device("cpu")) == torch.float32
