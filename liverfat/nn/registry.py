"""Model registry: named network factories per task, plus plug-ins from entry points.

A model factory is ``factory(in_channels: int, out_channels: int) -> torch.nn.Module``. The
model's task says what its network maps a batch (batch, in_channels, height, width) to:

- ``regression``: (batch, out_channels), the image-level networks the deep engine trains;
- ``classification``: (batch, n_classes) logits, e.g. the ROI-patch networks of the patch grader
  (built-ins ``patch_densenet`` and ``small_cnn``);
- ``segmentation``: (batch, out_channels, height, width), per-pixel class scores.

Names are unique within a task; every lookup takes the task (default ``regression``), so an
engine sees only its own kind of network. The built-in regression networks come from
:mod:`liverfat.nn.architectures`; an engine registers its own with :func:`register_model`, e.g.
``register_model("unet", make_unet, task="segmentation")``. Third-party packages add
architectures by declaring, in their ``pyproject.toml``::

    [project.entry-points."liverfat.models"]
    mynet = "mypackage.models:make_mynet"

(group ``liverfat.classification_models`` for classification networks,
``liverfat.segmentation_models`` for segmentation networks). A plug-in is imported only
when it is built, so a broken plug-in hurts only itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from torch import nn

from liverfat.errors import LiverfatError
from liverfat.nn import architectures

ModelFactory = Callable[[int, int], nn.Module]
TASKS = ("regression", "classification", "segmentation")
#: Entry-point group of regression networks (the deep engine's plug-ins).
ENTRY_POINT_GROUP = "liverfat.models"
ENTRY_POINT_GROUPS = {
    "regression": ENTRY_POINT_GROUP,
    "classification": "liverfat.classification_models",
    "segmentation": "liverfat.segmentation_models",
}


@dataclass(frozen=True)
class ModelSpec:
    """A registered factory and the layer Grad-CAM reads (``None``: found from the model)."""

    factory: ModelFactory
    gradcam_layer: str | None = None


#: Registered models of each task: the built-ins (Grad-CAM on the last convolutional stage) and
#: whatever engines add through :func:`register_model`.
_REGISTERED: dict[str, dict[str, ModelSpec]] = {
    "regression": {
        "resnet50": ModelSpec(architectures.resnet50, "layer4"),
        "resnet18": ModelSpec(architectures.resnet18, "layer4"),
        "densenet121": ModelSpec(architectures.densenet121, "features.denseblock4"),
        "small_cnn": ModelSpec(architectures.small_cnn, "features.3"),
        "attention_readout": ModelSpec(architectures.attention_readout, "features"),
        "attention_unet": ModelSpec(architectures.attention_unet, "merge"),
    },
    "classification": {
        "patch_densenet": ModelSpec(architectures.patch_densenet, "features.denseblock3"),
        "small_cnn": ModelSpec(architectures.small_cnn, "features.3"),
    },
    "segmentation": {},
}


def _registered(task: str) -> dict[str, ModelSpec]:
    if task not in TASKS:
        raise LiverfatError(f"unknown model task {task!r}; choose one of {', '.join(TASKS)}")
    return _REGISTERED[task]


def register_model(
    name: str,
    factory: ModelFactory,
    *,
    task: str = "regression",
    gradcam_layer: str | None = None,
) -> None:
    """Register ``factory`` as model ``name`` of ``task`` (again with the same factory: no-op).

    ``gradcam_layer`` names the module Grad-CAM reads; without it :func:`gradcam_layer` looks at
    the built model. A name already taken by another factory of the same task is an error.
    """
    models = _registered(task)
    if name in models and models[name].factory is not factory:
        raise LiverfatError(f"{task} model {name!r} is already registered")
    models[name] = ModelSpec(factory, gradcam_layer)


def plugin_models(task: str = "regression") -> dict[str, EntryPoint]:
    """Entry points of installed packages in the task's group (``liverfat.models`` for
    regression), by name; loaded lazily by :func:`get_model_factory`."""
    _registered(task)
    found = {}
    for entry in entry_points(group=ENTRY_POINT_GROUPS[task]):
        found[entry.name] = entry
    return found  # loaded lazily by get_model_factory, so a broken plug-in hurts only itself


def model_names(task: str = "regression") -> list[str]:
    """Sorted names of the task's registered and plug-in models."""
    return sorted({*_registered(task), *plugin_models(task)})


def get_model_factory(name: str, *, task: str = "regression") -> ModelFactory:
    """The factory of a registered or plug-in model; a clear error when it is unknown or broken.

    A registered model shadows a plug-in of the same name.
    """
    registered = _registered(task)
    if name in registered:
        return registered[name].factory
    plugins = plugin_models(task)
    if name not in plugins:
        raise LiverfatError(f"unknown model {name!r}; available: {', '.join(model_names(task))}")
    try:
        factory = plugins[name].load()
    except Exception as exc:  # noqa: BLE001 - any import error of a third-party plug-in
        raise LiverfatError(
            f"model plug-in {name!r} ({plugins[name].value}) failed to load: {exc}"
        ) from exc
    if not callable(factory):
        raise LiverfatError(f"model plug-in {name!r} ({plugins[name].value}) is not callable")
    return factory


def build_model(
    name: str, in_channels: int, out_channels: int, *, task: str = "regression"
) -> nn.Module:
    """Build model ``name`` of ``task`` (weights from scratch); an error unless it is a Module."""
    model = get_model_factory(name, task=task)(in_channels, out_channels)
    if not isinstance(model, nn.Module):
        raise LiverfatError(f"model {name!r} factory returned {type(model).__name__}, not a Module")
    return model


def gradcam_layer(name: str, model: nn.Module, *, task: str = "regression") -> str:
    """The layer Grad-CAM reads: the registered choice, else the model's ``gradcam_layer``
    attribute, else its last convolution."""
    spec = _registered(task).get(name)
    if spec is not None and spec.gradcam_layer is not None:
        return spec.gradcam_layer
    if hasattr(model, "gradcam_layer"):
        return str(model.gradcam_layer)
    convolutions = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convolutions:
        raise LiverfatError(f"model {name!r} has no Conv2d layer for Grad-CAM")
    return convolutions[-1]
