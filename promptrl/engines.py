"""The models a command runs, and who owns them: which engines exist, whether they fit, and one
`contextlib.ExitStack` that starts them and closes every one of them, whatever fails.

train, eval and predict all go through `open_models`: the target's scorer (transformers, an
in-process vLLM engine, or a server), and for train the agent (a training copy in transformers,
its samples optionally from vLLM). When agent and target are one base model on vLLM, one engine
serves both (`shares_engine`). Memory is checked before anything loads: two engines on one GPU,
or an engine beside the agent's training copy, must leave each other room, else the run would
fail minutes later when the second one starts.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack

import torch

from promptrl.errors import UserError
from promptrl.models import resolve_device
from promptrl.rollouts import BACKENDS as ROLLOUT_BACKENDS
from promptrl.rollouts import VLLMRollouts, engine_lora_rank

log = logging.getLogger(__name__)
GiB = 2**30


def shares_engine(cfg) -> bool:
    """True when one vLLM engine can serve the target and, through adapters, the agent: both on
    vLLM, the same weights (path and revision), dtype and device."""
    from promptrl.models import model_path
    from promptrl.scoring.vllm_engine import engine_dtype

    agent, target = cfg.agent, cfg.target
    if agent.backend != "vllm" or target.backend != "vllm":
        return False
    same = (model_path(agent, cfg.cache_dir) == model_path(target, cfg.cache_dir) and agent.revision == target.revision
            and engine_dtype(agent) == engine_dtype(target) and agent.device == target.device)
    return same


def _same_gpu(a: torch.device, b: torch.device) -> bool:
    return a.type == "cuda" and b.type == "cuda" and (a.index or 0) == (b.index or 0)


def check_gpu_memory(cfg, gpus: tuple[torch.device, torch.device], needs_agent: bool = True,
                     total_bytes: int | None = None, agent_bytes: int | None = None) -> None:
    """Refuse, before anything loads, engines that cannot fit on one GPU. `gpus`: the agent's and
    the target's resolved devices.

    - Two vLLM engines (agent and target on different models) each take their
      gpu_memory_utilization of the GPU when they start, and the agent's training copy needs
      some of what is left: together at most 0.9.
    - A vLLM target engine (or the one shared with the agent) beside the agent's training copy
      in transformers: the engine's fraction must leave the copy room. `agent_bytes` (what the
      copy needs, estimated from the agent's config when None) and `total_bytes` (the GPU's
      memory, asked of CUDA when None) are parameters so a CPU test can check the rule.
    """
    agent_dev, target_dev = gpus
    if not _same_gpu(agent_dev, target_dev):
        return
    shared = shares_engine(cfg)
    t = cfg.target.vllm.gpu_memory_utilization
    if cfg.agent.backend == "vllm" and cfg.target.backend == "vllm" and not shared:
        a = cfg.agent.vllm.gpu_memory_utilization
        if t + a > 0.9:
            raise UserError(f"target.vllm.gpu_memory_utilization={t} + agent.vllm.gpu_memory_utilization={a} = {t + a:.2f} "
                            f"of one GPU for two engines; expected at most 0.9 in all (the agent's training copy needs "
                            f"the rest), e.g. target.vllm.gpu_memory_utilization=0.55 agent.vllm.gpu_memory_utilization=0.25")
        return
    if not (needs_agent and cfg.target.backend == "vllm"):
        return
    if total_bytes is None:
        if not torch.cuda.is_available():
            return
        total_bytes = torch.cuda.get_device_properties(agent_dev.index or 0).total_memory
    need = agent_bytes if agent_bytes is not None else training_copy_bytes(cfg)
    if need is None:
        return
    left = (1 - t) * total_bytes
    if left < need:
        fits = max(0.0, 1 - need / total_bytes)
        raise UserError(f"target.vllm.gpu_memory_utilization={t} leaves {left / GiB:.1f} GiB of the GPU "
                        f"({total_bytes / GiB:.0f} GiB) for the agent's training copy, which needs about "
                        f"{need / GiB:.1f} GiB; expected at most {fits:.2f}, e.g. target.vllm.gpu_memory_utilization="
                        f"{max(fits - 0.05, 0.05):.2f}, or the agent on another GPU (agent.device=cuda:1)")


def training_copy_bytes(cfg) -> int | None:
    """About what the agent's training copy takes on its GPU: its weights in their dtype (counted
    on the meta device from the model's config, no weights read) plus a quarter for LoRA, Adam
    and activations of a PPO minibatch, plus 2 GiB of workspace. An estimate that errs high;
    None when the config cannot be read."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from promptrl.models import model_path, resolve_dtype

    try:
        config = AutoConfig.from_pretrained(model_path(cfg.agent, cfg.cache_dir), revision=cfg.agent.revision)
        with torch.device("meta"):
            params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    except Exception as e:  # an unreadable config: the engine's own start will say more
        log.info("agent size unknown (%s); GPU memory not checked", str(e).splitlines()[0][:120] if str(e) else type(e).__name__)
        return None
    width = torch.tensor([], dtype=resolve_dtype(cfg.agent.dtype, resolve_device(cfg.agent.device))).element_size()
    return int(params * width * 1.25) + 2 * GiB


def check_agent_backend(cfg, needs_agent: bool = True) -> None:
    if cfg.agent.backend == "chat":  # a hosted proposer: only for the optimisers that just sample it
        from promptrl.chat import check_chat_agent

        return check_chat_agent(cfg)
    if cfg.agent.backend not in ROLLOUT_BACKENDS:
        raise UserError(f"agent.backend={cfg.agent.backend!r}; expected one of: {', '.join(ROLLOUT_BACKENDS)}, chat")
    if cfg.agent.backend == "vllm":
        engine_lora_rank(cfg.agent.lora_r)  # before any model loads: a rank vLLM cannot serve is an error
    if needs_agent:
        check_gpu_memory(cfg, (resolve_device(cfg.agent.device), resolve_device(cfg.target.device)))


def start_agent_engine(cfg):
    """The agent's engine; when `shares_engine`, the target's too, with target.vllm's options."""
    from promptrl.scoring.vllm_engine import start_engine

    shared = shares_engine(cfg)
    engine_cfg, where = (cfg.target.vllm, "target.vllm") if shared else (cfg.agent.vllm, "agent.vllm")
    llm = start_engine(cfg.agent, engine_cfg, cfg.cache_dir, where, cfg.target.num_threads if shared else None,
                       lora_rank=engine_lora_rank(cfg.agent.lora_r))
    log.info("agent rollouts on vLLM (%s)", "one engine with the target" if shared else "an engine of its own")
    return llm


def build_agent(cfg, seed: int, engine=None, stack: ExitStack | None = None):
    """The agent; with agent.backend=vllm its samples come from `engine` (one shared with the
    target) or from an engine of its own, which `stack` (when given) closes."""
    from promptrl.agent import Agent
    from promptrl.algos.appo import uses_critic
    from promptrl.models import load_model
    from promptrl.train import seed_everything

    check_agent_backend(cfg)
    if cfg.agent.backend == "chat":
        from promptrl.chat import ChatProposer

        proposer = ChatProposer.from_config(cfg.agent)  # proposes only (APE, OPRO, GEPA); nothing loads here
        if stack is not None:
            stack.callback(proposer.close)
        return proposer
    base, tok = load_model(cfg.agent, cfg.cache_dir)
    seed_everything(seed)  # LoRA and value-head initialisation
    a = cfg.agent
    agent = Agent(base, tok, lora_r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout,
                  target_modules=a.target_modules, max_new_tokens=a.max_new_tokens, no_chat_template=a.no_chat_template,
                  value_heads=uses_critic(cfg.algo))  # group-relative estimators build no critic
    if stack is not None:
        stack.callback(agent.close)
    if a.backend == "vllm":  # agent.close() closes the rollouts and their engine (shutdown is idempotent)
        agent.rollouts = VLLMRollouts(engine if engine is not None else start_agent_engine(cfg), agent)
    return agent


def open_models(cfg, task, stack: ExitStack, needs_agent: bool = False, seed: int | None = None):
    """(scorer, agent or None) for a command, each registered with `stack` to be closed in the
    reverse order of their start, every one of them even when another's close fails."""
    from promptrl.scoring import build_scorer
    from promptrl.scoring.vllm_engine import shutdown

    if needs_agent:
        check_agent_backend(cfg)
    engine = None
    if needs_agent and shares_engine(cfg):  # one engine for both: started here, handed to each
        engine = start_agent_engine(cfg)
        stack.callback(shutdown, engine)
    scorer = build_scorer(cfg.target, task, cfg.cache_dir, engine=engine)
    stack.callback(scorer.close)
    agent = build_agent(cfg, cfg.seed if seed is None else seed, engine=engine, stack=stack) if needs_agent else None
    return scorer, agent
