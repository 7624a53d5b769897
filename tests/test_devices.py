"""No method creates a tensor on the CPU inside write or read when the model lives on another
device (on CUDA such a tensor fails at its first op with the model's: issue 11, `query_only`'s
memory `torch.zeros(B, 0)` at `index_select`). Runs on a CPU-only machine.

How: `elsewhere()` stands in for a GPU. Inside it, `.to(ELSEWHERE)` turns a tensor into an
`Elsewhere` tensor, a wrapper subclass (torch's `__torch_dispatch__` machinery) that reports
device `meta` but holds its real values on the CPU. A `TorchDispatchMode` sees every aten op
(forward, backward, double backward): it runs the op on the held CPU values, wraps its outputs
when an input is `Elsewhere` or the op was asked for `device=meta` (so `torch.arange(n,
device=x.device)` lands elsewhere, `torch.arange(n)` on the CPU), and raises `DeviceMismatch`
when an op mixes an `Elsewhere` tensor with a CPU tensor that CUDA would refuse (CUDA accepts
0-dim CPU tensors as scalars and CPU index tensors for indexing, and so does this check).
Every op runs for real, so `.item()` for logs, masks by value and data-dependent shapes work
as on a GPU, and the numbers equal a plain CPU run's.

Why `meta` as the reported device: a CPU-only build cannot run autograd on tensors that report
`cuda` (no device guard, the process aborts), and `torch.zeros(..., device="cuda")` there raises
before any mode sees it; `meta` has a guard and needs no init. Why not plain meta tensors: they
hold no values, so every `.item()` (GradMem's log, full context's `lengths.max()`) stops them.
`torch.tensor(data, device=meta)` builds its tensor below the dispatch modes (transformers'
DynamicCache does this), so a `TorchFunctionMode` redirects factory calls with `device=meta`.

Each method runs a training step (the trainer's path, with its backward) and an evaluation, on
the CPU and then elsewhere; loss, gradients and logits must be identical. The registry is read
when the test runs, so methods that plugins registered are checked too (a method that fails on
the CPU as well is left to the other tests).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, return_and_correct_aliasing

from harness.contract import Memory
from harness.data import collate
from harness.pipeline import training_loss, write_then_read
from harness.registry import METHODS
from methods.query_only import QueryOnly
from tests.conftest import make_method

ELSEWHERE = torch.device("meta")   # the device `Elsewhere` tensors report: the model's "GPU"
aten = torch.ops.aten
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default}   # copies between devices are legal


class DeviceMismatch(RuntimeError):
    pass


class Elsewhere(torch.Tensor):
    """A tensor that reports device ELSEWHERE and keeps its values on the CPU (`.held`)."""

    @staticmethod
    def __new__(cls, held: torch.Tensor, requires_grad: bool = False):
        return torch.Tensor._make_wrapper_subclass(
            cls, held.size(), strides=held.stride(), storage_offset=held.storage_offset(),
            dtype=held.dtype, layout=held.layout, device=ELSEWHERE, requires_grad=requires_grad)

    def __init__(self, held: torch.Tensor, requires_grad: bool = False):
        self.held = held

    def __repr__(self):
        return f"Elsewhere({self.held!r})"

    __torch_function__ = torch._C._disabled_torch_function_impl

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


def _is_elsewhere(device) -> bool:
    return device is not None and torch.device(device) == ELSEWHERE


def _run(func, args, kwargs):
    """Run one aten op on the held values; refuse CPU tensors mixed in as CUDA would."""
    leaves = pytree.tree_leaves((args, kwargs))
    elsewhere = any(isinstance(t, Elsewhere) for t in leaves)
    checked = pytree.tree_leaves((args[0], args[2:], kwargs)) if func in INDEXING else leaves  # args[1]: indices
    on_cpu = [t for t in checked if type(t) is torch.Tensor and t.dim() > 0]
    if elsewhere and on_cpu and func not in CROSS_DEVICE:
        raise DeviceMismatch(f"Expected all tensors to be on the same device, but found at least two devices, "
                             f"{ELSEWHERE} (the model's) and cpu! ({func}; cpu tensors of shapes "
                             f"{[tuple(t.shape) for t in on_cpu]})")
    device = kwargs.get("device")
    asked_elsewhere = _is_elsewhere(device)
    if asked_elsewhere:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    held_args, held_kwargs = pytree.tree_map_only(Elsewhere, lambda t: t.held, (args, kwargs))
    out = func(*held_args, **held_kwargs)
    if asked_elsewhere or (elsewhere and device is None):   # not `.to("cpu")` / `device=cpu`
        return return_and_correct_aliasing(func, args, kwargs, pytree.tree_map_only(torch.Tensor, Elsewhere, out))
    return out


class _Ops(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _run(func, args, kwargs or {})


class _Factories(TorchFunctionMode):
    """`torch.tensor(data, device=meta)` and friends: built on the CPU, then moved elsewhere."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not _is_elsewhere(kwargs.get("device")):
            return func(*args, **kwargs)
        out = func(*args, **{**kwargs, "device": torch.device("cpu")})
        return pytree.tree_map_only(torch.Tensor, lambda t: t if isinstance(t, Elsewhere) else
                                    Elsewhere(t, t.requires_grad), out)


@contextlib.contextmanager
def elsewhere():
    """While active, `.to(ELSEWHERE)` puts modules and tensors on the stand-in device."""
    with _Factories(), _Ops():
        yield


def _step(method, batch, train: bool) -> list[torch.Tensor]:
    """A training step's loss and gradients (the trainer's path), or an evaluation's logits."""
    method.train(train)
    if not train:
        with torch.no_grad():
            return [write_then_read(method, batch)[0]]
    loss, _ = training_loss(method, batch)
    loss.backward()
    return [loss, *(p.grad for p in method.parameters() if p.grad is not None)]


def device_failures(names, task) -> dict[str, str]:
    """Method name -> what broke on the stand-in device, for each method that runs on the CPU."""
    failures = {}
    batch = collate(task.examples("train", 3, 0), task, "all")
    for name in names:
        for train in (True, False):
            try:
                expected = _step(make_method(name, task), batch, train)
            except Exception:   # broken on the CPU too (e.g. a test plugin that always raises):
                continue        # not a device problem, and other tests cover it
            method = make_method(name, task)
            try:
                with elsewhere():
                    method.to(ELSEWHERE)
                    got = _step(method, batch.to(ELSEWHERE), train)
                    stray = [n for n, p in method.named_parameters() if not isinstance(p, Elsewhere)]
                    assert not stray, f"parameters left on the CPU: {stray}"
                    assert len(got) == len(expected) and all(isinstance(t, Elsewhere) for t in got), \
                        "an output or gradient on the CPU"
                    assert all(torch.equal(g.held, e) for g, e in zip(got, expected)), "numbers differ from the CPU's"
            except Exception as error:
                failures[f"{name} ({'train' if train else 'eval'})"] = f"{type(error).__name__}: {error}"
    return failures


@pytest.mark.slow
def test_every_registered_method_keeps_its_tensors_on_the_models_device(compact_task):
    failures = device_failures(sorted(METHODS), compact_task)
    assert not failures, "\n".join(f"{name}: {error}" for name, error in failures.items())


class StrayCpuMemory(QueryOnly):
    """query_only as it was before issue 11: its memory is made on the CPU."""
    name = "stray_cpu_memory"

    def write(self, context_ids, context_mask, write_setting=None):
        return Memory(state=torch.zeros(context_ids.shape[0], 0), floats=0)


def test_a_tensor_made_on_the_cpu_inside_write_is_caught(compact_task, monkeypatch):
    monkeypatch.setitem(METHODS, StrayCpuMemory.name, StrayCpuMemory)   # as a plugin registers it
    failures = device_failures([StrayCpuMemory.name], compact_task)
    assert set(failures) == {"stray_cpu_memory (train)", "stray_cpu_memory (eval)"}
    assert all("index_select" in error for error in failures.values())


def test_the_stand_in_device_refuses_what_cuda_refuses_and_allows_what_it_allows():
    with elsewhere():
        x = torch.arange(6.0).reshape(2, 3).to(ELSEWHERE)
        assert isinstance(torch.arange(3, device=x.device), Elsewhere)
        assert isinstance(torch.tensor([1, 2], device=x.device), Elsewhere)
        assert type(torch.arange(3)) is torch.Tensor
        assert (x * torch.tensor(2.0)).sum().item() == 30.0          # a CPU scalar is fine
        assert x[torch.tensor([1])].held.tolist() == [[3.0, 4.0, 5.0]]  # so is a CPU index
        assert type(x.cpu()) is torch.Tensor
        with pytest.raises(DeviceMismatch, match="index_select"):
            torch.zeros(2, 0).index_select(0, torch.tensor([0, 1]).to(ELSEWHERE))
        with pytest.raises(DeviceMismatch, match="cat"):
            torch.cat([x, torch.zeros(1, 3)])
