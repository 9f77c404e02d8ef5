"""Where torch runs and how: device choice, mixed precision, channels-last memory, threads,
a worker's share of GPU memory.

One home for these choices, shared by the network engines and the atlas engine's torch
backend. Mixed precision is on CUDA only: bfloat16 autocast where the device supports it (no loss
scaling needed: bfloat16 has float32's range), float16 with a gradient scaler on older devices;
elsewhere the same calls are disabled no-ops, so callers need no branch of their own.
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


def check_device(device: str) -> None:
    """Raise a one-line :class:`LiverfatError` unless ``device`` can be used here: ``auto``,
    ``cpu``, or a CUDA device that exists (``cuda``, ``cuda:N`` with N below the count)."""
    from liverfat.errors import LiverfatError

    if device in ("auto", "cpu"):
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise LiverfatError(f"device {device!r}: not a torch device ({exc})") from exc
    if parsed.type != "cuda":
        raise LiverfatError(f"device {device!r}: use auto, cpu or cuda[:N]")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise LiverfatError(f"device {device!r}: no CUDA device here (use auto or cpu)")
    if parsed.index is not None and parsed.index >= count:
        raise LiverfatError(f"device {device!r}: this machine has {count} CUDA device(s)")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type on ``device``: bfloat16 on a CUDA device that has it natively
    (Ampere and later), float16 on older CUDA devices, None (full float32) elsewhere."""
    if device.type != "cuda":
        return None
    return (
        torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    )


def mixed_precision(device: torch.device) -> torch.autocast:
    """An autocast context in :func:`autocast_dtype`; disabled (full float32) off CUDA."""
    dtype = autocast_dtype(device)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The loss scaler that goes with :func:`mixed_precision`: enabled for float16 only
    (elsewhere ``scale`` returns the loss unchanged and ``step`` is a plain optimiser step)."""
    return torch.amp.GradScaler("cuda", enabled=autocast_dtype(device) == torch.float16)


@contextlib.contextmanager
def float32_head(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model``'s last linear layer (the regression or classification head) outside autocast,
    in float32, while the context lasts.

    bfloat16 keeps three significant digits: a head output of 4 standard deviations would be
    rounded by 0.03 of one, visible in a liver-fat value. The layer's forward is patched on the
    instance and restored on exit, so the state dict and copies of the model are untouched. A
    model without a linear layer runs as it is.
    """
    heads = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not heads:
        yield model
        return
    head, forward = heads[-1], heads[-1].forward

    def run_in_float32(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return forward(x.float())

    head.forward = run_in_float32
    try:
        yield model
    finally:
        del head.forward  # the class's forward again


@contextlib.contextmanager
def tuned_convolutions(device: torch.device) -> Iterator[None]:
    """On CUDA, let cuDNN time its convolution algorithms once per input shape (training uses
    one fixed shape, so the search pays for itself within a few steps); restored on exit."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


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
