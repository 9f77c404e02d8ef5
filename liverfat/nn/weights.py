"""Local weight files: a state dict read without pickle, copied into a model where it fits.

Weights come only from files the user names (safetensors, or a torch file read with
``weights_only=True``); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from liverfat.errors import LiverfatError


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (``weights_only=True``, no pickle).

    A torch checkpoint holding ``{"state_dict": ...}`` is unwrapped. Tensors are on the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise LiverfatError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or unsafe file: one clear line
        raise LiverfatError(f"weights file {path}: cannot be read as a state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise LiverfatError(f"weights file {path}: not a state dict")
    return state


def load_pretrained(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Copy matching tensors of a local weights file into ``model``; return the skipped keys.

    Tensors whose name or shape does not match (typically the output layer, sized for another
    number of targets) are skipped; a file matching nothing at all is an error.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise LiverfatError(f"weights file {path}: no tensor matches the model's layers")
    model.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))
