"""A stand-in accelerator for CPU-only machines: tensors that compute on the CPU but say they are
on `cuda:0`, and fail, as CUDA would, when an operation mixes them with a real CPU tensor.

Our users run on GPUs; no machine of this project has one. The bug this catches is the common
one: a tensor created without `device=` (a value head built after the model moved, an index made
with `torch.tensor(...)`) meets the model's tensors. On a GPU that is a crash; on a CPU it
silently works. Here it is the same error as on a GPU:

    with proxy_cuda():
        model = to_proxy(model)           # every parameter and buffer now claims cuda:0
        ...run the hot path...            # mixing in a plain CPU tensor raises DeviceMismatch

How: `ProxyTensor` is a wrapper subclass (`__torch_dispatch__`) holding a CPU tensor; every aten
op on it unwraps, runs on the CPU and wraps the result, after checking that no other tensor
argument is a plain CPU tensor (0-dim CPU tensors and CPU index tensors are allowed, as CUDA
allows them). A `TorchFunctionMode` turns `device="cuda"` in factory calls and `.to("cuda")`
/ `.cuda()` into proxy tensors, and `.cpu()` / `.to("cpu")` unwraps. Data-dependent operations
(`.item()`, `generate`'s stopping checks, sampling) run for real, so sampling, scoring and the
PPO update can run end to end — which the `meta` device cannot do.
"""

from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

PROXY = torch.device("meta")


class DeviceMismatch(RuntimeError):
    pass


# Ops that PyTorch itself allows across devices (the copy between them, CPU index tensors,
# the scalar read-out).
CROSS_DEVICE_OK = {"aten::copy_", "aten::_to_copy", "aten::index", "aten::index_put_", "aten::index_put",
                   "aten::_index_put_impl_", "aten::_local_scalar_dense", "aten::lift_fresh"}


class ProxyTensor(torch.Tensor):
    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        assert type(elem) is torch.Tensor and elem.device.type == "cpu", (type(elem), elem.device)
        r = torch.Tensor._make_wrapper_subclass(
            cls, elem.size(), strides=elem.stride(), storage_offset=elem.storage_offset(), dtype=elem.dtype,
            layout=elem.layout, device=PROXY, requires_grad=elem.requires_grad,
        )
        r.elem = elem.detach() if elem.requires_grad else elem
        return r

    def __repr__(self):
        return f"ProxyTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def _wrap(out):
    return tree_map(lambda e: ProxyTensor(e) if type(e) is torch.Tensor else e, out)


def _is_proxy_device(device) -> bool:
    return device is not None and not isinstance(device, int) and torch.device(device).type == PROXY.type


def run_op(func, args, kwargs):
    """One aten op: on the CPU data of the proxies, with CUDA's device rule enforced."""
    name = func._schema.name
    plain = []

    def unwrap(e):
        if isinstance(e, ProxyTensor):
            return e.elem
        if isinstance(e, torch.Tensor) and e.dim() > 0:
            plain.append(e)
        return e

    uargs, ukwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
    has_proxy = any(isinstance(e, ProxyTensor) for e in tree_flatten_tensors((args, kwargs)))
    to_proxy_device = _is_proxy_device(kwargs.get("device"))
    if to_proxy_device:
        ukwargs["device"] = torch.device("cpu")
    if name == "aten::_to_copy":
        out = func(*uargs, **ukwargs)
        return _wrap(out) if (to_proxy_device or (has_proxy and kwargs.get("device") is None)) else out
    if has_proxy and plain and name not in CROSS_DEVICE_OK:
        raise DeviceMismatch(
            f"{name}: expected all tensors to be on the same device, but found at least two devices, "
            f"{PROXY} (the model's) and cpu (a tensor of shape {tuple(plain[0].shape)} made without device=)")
    out = func(*uargs, **ukwargs)
    if name == "aten::copy_" and isinstance(args[0], ProxyTensor):
        return args[0]
    return _wrap(out) if (has_proxy or to_proxy_device) else out


def tree_flatten_tensors(tree):
    from torch.utils._pytree import tree_leaves
    return [e for e in tree_leaves(tree) if isinstance(e, torch.Tensor)]


class ProxyMode(TorchDispatchMode):
    """Active inside `proxy_device()`: factory ops asked for the proxy device (also those made
    inside composite ops, such as attention's causal mask) create proxy tensors."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return run_op(func, args, kwargs or {})


def to_proxy_tensor(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, ProxyTensor):
        return t
    if t.device.type != "cpu":
        raise DeviceMismatch(f"cannot proxy a tensor on {t.device}")
    return ProxyTensor(t.detach()).requires_grad_(t.requires_grad)


def to_proxy(module: torch.nn.Module) -> torch.nn.Module:
    """Every parameter and buffer of `module` as a proxy tensor (what `module.to(device)` does)."""
    old = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return module._apply(to_proxy_tensor)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(old)


class ProxyConstructors(TorchFunctionMode):
    """`torch.tensor(data, device=...)` copies its data below the dispatcher, where no mode sees
    it; this makes it on the CPU and wraps it."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and _is_proxy_device(kwargs.get("device")):
            return ProxyTensor(func(*args, **{**kwargs, "device": "cpu"}))
        if func is torch.Tensor.tolist and isinstance(args[0], ProxyTensor):
            return args[0].elem.tolist()  # a device-to-host read, as on CUDA
        return func(*args, **kwargs)


class _NoGradInsteadOfInference:
    """Stands in for torch._C._InferenceMode: inference tensors cannot be wrapped (their views
    have no version counter), so inside the proxy `torch.inference_mode()` acts as no_grad."""

    def __init__(self, mode: bool = True):
        self.mode = mode

    def __enter__(self):
        self.prev = torch.is_grad_enabled()
        if self.mode:
            torch._C._set_grad_enabled(False)

    def __exit__(self, *exc):
        torch._C._set_grad_enabled(self.prev)


@contextlib.contextmanager
def proxy_device():
    real = torch._C._InferenceMode
    torch._C._InferenceMode = _NoGradInsteadOfInference
    try:
        with ProxyConstructors(), ProxyMode():
            yield
    finally:
        torch._C._InferenceMode = real


def on_proxy(t) -> bool:
    return isinstance(t, ProxyTensor)
