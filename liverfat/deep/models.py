"""Model registry: built-in 2D networks plus plug-ins from the ``liverfat.models`` entry points.

A model factory is ``factory(in_channels: int, out_channels: int) -> torch.nn.Module`` mapping
(batch, in_channels, height, width) to (batch, out_channels). Third-party packages add
architectures by declaring, in their ``pyproject.toml``::

    [project.entry-points."liverfat.models"]
    mynet = "mypackage.models:make_mynet"

Weights start from scratch; :func:`load_pretrained` accepts a local state-dict file
(safetensors, or a torch file read with ``weights_only=True``). Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import torch
from torch import nn

from liverfat.errors import LiverfatError

ModelFactory = Callable[[int, int], nn.Module]
ENTRY_POINT_GROUP = "liverfat.models"


def _resnet(block: str, layers: list[int], in_channels: int, out_channels: int) -> nn.Module:
    """A 2D MONAI ResNet with a 7x7 conv1 of stride 2 (as in the UK Biobank studies)."""
    from monai.networks.nets import ResNet

    return ResNet(
        block=block,
        layers=layers,
        block_inplanes=[64, 128, 256, 512],
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        num_classes=out_channels,
    )


def resnet50(in_channels: int, out_channels: int) -> nn.Module:
    """MONAI ResNet50 (bottleneck blocks 3-4-6-3), 2D, 7x7 conv1 with stride 2."""
    return _resnet("bottleneck", [3, 4, 6, 3], in_channels, out_channels)


def resnet18(in_channels: int, out_channels: int) -> nn.Module:
    """MONAI ResNet18 (basic blocks 2-2-2-2), 2D, 7x7 conv1 with stride 2: a lighter CPU option."""
    return _resnet("basic", [2, 2, 2, 2], in_channels, out_channels)


def densenet121(in_channels: int, out_channels: int) -> nn.Module:
    """MONAI DenseNet121, 2D."""
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)


class SmallCNN(nn.Module):
    """Four conv-norm-ReLU-pool stages (16-32-64-128 channels) and a linear head.

    A network that trains in seconds on a CPU, for tests and demonstrations; its last
    convolution stage (``features.3``) is the Grad-CAM layer.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        stages = []
        channels = in_channels
        for stage in range(4):
            out = width * 2**stage
            stages.append(
                nn.Sequential(
                    nn.Conv2d(channels, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                    nn.MaxPool2d(2) if stage < 3 else nn.Identity(),
                )
            )
            channels = out
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def small_cnn(in_channels: int, out_channels: int) -> nn.Module:
    return SmallCNN(in_channels, out_channels)


BUILTIN_MODELS: dict[str, ModelFactory] = {
    "resnet50": resnet50,
    "resnet18": resnet18,
    "densenet121": densenet121,
    "small_cnn": small_cnn,
}

#: Grad-CAM target layer of each built-in model (the last convolutional stage).
GRADCAM_LAYERS = {
    "resnet50": "layer4",
    "resnet18": "layer4",
    "densenet121": "features.denseblock4",
    "small_cnn": "features.3",
}


def plugin_models() -> dict[str, ModelFactory]:
    """Factories registered by installed packages under the ``liverfat.models`` entry points."""
    found = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry
    return found  # loaded lazily by get_model_factory, so a broken plug-in hurts only itself


def model_names() -> list[str]:
    return sorted({*BUILTIN_MODELS, *plugin_models()})


def get_model_factory(name: str) -> ModelFactory:
    """The factory of a built-in or plug-in model; a clear error when it is unknown or broken."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name]
    plugins = plugin_models()
    if name not in plugins:
        raise LiverfatError(f"unknown model {name!r}; available: {', '.join(model_names())}")
    try:
        factory = plugins[name].load()
    except Exception as exc:  # noqa: BLE001 - any import error of a third-party plug-in
        raise LiverfatError(
            f"model plug-in {name!r} ({plugins[name].value}) failed to load: {exc}"
        ) from exc
    if not callable(factory):
        raise LiverfatError(f"model plug-in {name!r} ({plugins[name].value}) is not callable")
    return factory


def build_model(name: str, in_channels: int, out_channels: int) -> nn.Module:
    """Build model ``name`` and check it maps a batch to (batch, out_channels)."""
    model = get_model_factory(name)(in_channels, out_channels)
    if not isinstance(model, nn.Module):
        raise LiverfatError(f"model {name!r} factory returned {type(model).__name__}, not a Module")
    return model


def gradcam_layer(name: str, model: nn.Module) -> str:
    """The layer Grad-CAM reads: the built-in choice, else the model's ``gradcam_layer`` attribute,
    else its last convolution."""
    if name in GRADCAM_LAYERS:
        return GRADCAM_LAYERS[name]
    if hasattr(model, "gradcam_layer"):
        return str(model.gradcam_layer)
    convolutions = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise LiverfatError(f"model {name!r} has no Conv2d layer for Grad-CAM")
    return convolutions[-1]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (``weights_only=True``, no pickle)."""
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
