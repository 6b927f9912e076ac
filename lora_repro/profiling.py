"""Memory instruments shared by every run record and by `make bench`: the peak of live tensor bytes
(a torch dispatch mode) and the sampled peak resident set (or CUDA's max allocated)."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any

import psutil
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """The peak of live CPU tensor bytes while it is active: every tensor an operator returns is
    counted (once per storage) until it is freed. On CPU this is what a method changes (weights,
    gradients, optimizer state, activations), which the process's resident set hides under the
    allocator, the libraries and the interpreter. `existing`: the tensors already alive (weights,
    optimizer state), registered by storage, so that an operator returning a view of one (linear's
    weight.t()) or the tensor itself (AdamW's in-place updates) does not count it a second time;
    `start`: other bytes already alive. Each operator pays a little Python, so the trainer measures
    only the first steps."""

    def __init__(self, start: int = 0, existing: Iterable[torch.Tensor] = ()):
        super().__init__()
        self.live = self.peak = int(start)
        self._sizes: dict[int, int] = {}
        for tensor in existing:
            self._track(tensor)
        self.peak = self.live

    def _track(self, value: Any) -> None:
        if not isinstance(value, torch.Tensor) or value.device.type != "cpu" or value.is_meta:
            return
        storage = value.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if not size or key in self._sizes:
            return
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_leaves(out):
            self._track(value)
        return out


def optimizer_state(optimizer: torch.optim.Optimizer | None) -> list[torch.Tensor]:
    """The optimizer's per-parameter state tensors (AdamW: both moments and the 0-dim step count)."""
    per_param = getattr(optimizer, "state", None) or {}  # accelerate's wrapper forwards .state
    return [t for s in per_param.values() for t in s.values() if torch.is_tensor(t)]


def live_tensors(module: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
    """What a training step finds alive: the module's parameters and buffers, and the optimizer's
    state tensors (LiveTensorBytes' `existing`)."""
    return [*module.parameters(), *module.buffers(), *optimizer_state(optimizer)]


class PeakMemory:
    """Peak memory over a block. On CUDA: torch.cuda.max_memory_allocated (reset on entry). On CPU:
    the highest resident set size sampled every `interval` s during the block, which, unlike the
    process-wide ru_maxrss, is per run when a Hydra multirun trains several runs in one process."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.cuda = torch.cuda.is_available()
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def source(self) -> str:
        return "cuda_max_memory_allocated" if self.cuda else "cpu_peak_rss_sampled"

    def _sample(self) -> None:
        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = psutil.Process().memory_info().rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.peak = int(torch.cuda.max_memory_allocated())
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak = max(self.peak, psutil.Process().memory_info().rss)
