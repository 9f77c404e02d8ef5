"""Where torch runs and how: device choice, mixed precision, channels-last memory, threads,
a worker's share of GPU memory.

One home for these choices, shared by the network engines and the atlas engine's torch
backend. Mixed precision is float16 autocast with a gradient scaler, on CUDA only; elsewhere the
same calls are disabled no-ops, so callers need no branch of their own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch
from torch import nn

#: A module or a 4D batch (n, c, h, w): what :func:`channels_last` converts.
ModuleOrBatch = TypeVar("ModuleOrBatch", nn.Module, torch.Tensor)


def pick_device(device: str = "auto") -> torch.device:
    """The torch device for ``device``: ``auto`` is CUDA when available, else CPU.

    Any other string (``cpu``, ``cuda``, ``cuda:1``) is passed to :class:`torch.device`.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def mixed_precision(device: torch.device) -> torch.autocast:
    """An autocast context: float16 on CUDA, disabled (full float32) on any other device."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler that goes with :func:`mixed_precision`: enabled on CUDA only (elsewhere
    ``scale`` returns the loss unchanged and ``step`` is a plain optimiser step)."""
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def channels_last(value: ModuleOrBatch) -> ModuleOrBatch:
    """A module moved to (in place), or a 4D batch copied into, channels-last memory format."""
    if isinstance(value, nn.Module):
        return value.to(memory_format=torch.channels_last)
    return value.contiguous(memory_format=torch.channels_last)


def set_torch_threads(n_threads: int) -> None:
    """Cap torch's intra-op thread pool of this process at ``n_threads`` threads."""
    torch.set_num_threads(n_threads)


@contextlib.contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Within the block, torch's intra-op pool has ``n_threads`` threads; afterwards the count
    it had before, so one stage's cap does not leak into later stages of the same process."""
    previous = torch.get_num_threads()
    set_torch_threads(n_threads)
    try:
        yield
    finally:
        set_torch_threads(previous)


def limit_cuda_memory(fraction: float, device: str | torch.device = "cuda") -> None:
    """Cap this process's CUDA caching allocator on ``device`` at ``fraction`` (0-1] of the
    device's memory, so worker processes sharing one GPU cannot starve each other.

    Initialises CUDA in this process: call it only in a process that will use the GPU.
    """
    index = torch.device(device).index
    if index is None:  # torch refuses a bare "cuda" here: it wants an index
        index = torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(float(fraction), index)  # an int raises
