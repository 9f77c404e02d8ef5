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


#: The files of a saved network engine: its JSON description and its network's state dict.
ENGINE_JSON = "engine.json"
NETWORK_FILE = "network.safetensors"


def save_network_engine(directory: str | os.PathLike[str], network: nn.Module, meta: dict) -> None:
    """Write ``network.safetensors`` (the state dict, on the CPU) and ``engine.json`` (``meta``:
    the engine's name, parameters and fitted state), each atomically, into ``directory``."""
    from safetensors.torch import save_file

    from liverfat.data.atomic import atomic_path, write_json_atomic

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_path(directory / NETWORK_FILE) as tmp:
        save_file(state, str(tmp))
    write_json_atomic(directory / ENGINE_JSON, meta)


def read_engine_meta(directory: str | os.PathLike[str], engine: str, what: str) -> dict:
    """``engine.json`` of a saved ``engine`` (its class name); ``what`` names it in errors.

    Saved parameters naming a pretrained weights file that is gone are cleared: the weights are
    in the saved network already.
    """
    import json

    path = Path(directory) / ENGINE_JSON
    if not path.is_file():
        raise LiverfatError(f"{directory}: no {ENGINE_JSON} (not a saved {what})")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if meta.get("engine", engine) != engine:
        raise LiverfatError(f"{directory}: {ENGINE_JSON} is not a {what}'s")
    params = meta["params"]
    if params.get("pretrained") and not Path(params["pretrained"]).is_file():
        params["pretrained"] = None
    return meta


def load_network_state(directory: str | os.PathLike[str], network: nn.Module) -> nn.Module:
    """``network`` with the saved state dict of ``directory`` loaded, in eval mode."""
    from safetensors.torch import load_file

    network.load_state_dict(load_file(str(Path(directory) / NETWORK_FILE)))
    return network.eval()
