"""Model registry: built-ins, engine-registered models per task, entry-point plug-ins."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch import nn

from liverfat.errors import LiverfatError
from liverfat.nn import registry


@pytest.fixture
def isolated_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    copy = {task: dict(models) for task, models in registry._REGISTERED.items()}
    monkeypatch.setattr(registry, "_REGISTERED", copy)


def test_builtins_and_unknown_model():
    assert {"resnet50", "resnet18", "densenet121", "small_cnn"} <= set(registry.model_names())
    with pytest.raises(LiverfatError, match="unknown model"):
        registry.build_model("nope", 1, 1)
    with pytest.raises(LiverfatError, match="unknown model task"):
        registry.model_names("detection")


def test_gradcam_layers_of_builtins_are_modules_of_the_model():
    for name, layer in [("resnet18", "layer4"), ("small_cnn", "features.3")]:
        net = registry.build_model(name, 1, 2)
        assert registry.gradcam_layer(name, net) == layer
        assert layer in dict(net.named_modules())


def test_classification_task_has_its_own_builtins():
    assert registry.TASKS == ("regression", "classification", "segmentation")
    assert registry.ENTRY_POINT_GROUPS["classification"] == "liverfat.classification_models"
    assert registry.model_names("classification") == ["patch_densenet", "small_cnn"]
    assert "patch_densenet" not in registry.model_names()  # not a regression network
    for name, layer in [("patch_densenet", "features.denseblock3"), ("small_cnn", "features.3")]:
        net = registry.build_model(name, 2, 4, task="classification")
        assert net(torch.rand(3, 2, 16, 16)).shape == (3, 4)  # logits per class
        assert registry.gradcam_layer(name, net, task="classification") == layer
        assert layer in dict(net.named_modules())


def _segmenter(in_channels: int, out_channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1))


def test_an_engine_registers_a_segmentation_model_apart_from_regression(isolated_registry):
    registry.register_model("tiny_seg", _segmenter, task="segmentation")
    registry.register_model("tiny_seg", _segmenter, task="segmentation")  # same factory: no-op
    assert "tiny_seg" in registry.model_names("segmentation")
    assert "tiny_seg" not in registry.model_names()
    assert "small_cnn" not in registry.model_names("segmentation")
    net = registry.build_model("tiny_seg", 2, 3, task="segmentation")
    assert net(torch.rand(1, 2, 16, 12)).shape == (1, 3, 16, 12)
    assert registry.gradcam_layer("tiny_seg", net, task="segmentation") == "0"  # last Conv2d
    with pytest.raises(LiverfatError, match="unknown model"):
        registry.build_model("tiny_seg", 2, 3)  # not a regression model
    with pytest.raises(LiverfatError, match="already registered"):
        registry.register_model("tiny_seg", lambda i, o: _segmenter(i, o), task="segmentation")
    registry.register_model("tiny_seg", _segmenter, gradcam_layer="x")  # other task: its own name
    assert registry.gradcam_layer("tiny_seg", net) == "x"


def test_entry_point_plugin(tmp_path, monkeypatch):
    """A distribution on sys.path declaring ``liverfat.models`` is found and built."""
    package = tmp_path / "tinyplug"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            """
            import torch
            def make(in_channels, out_channels):
                nn = torch.nn
                return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1),
                                     nn.Flatten(), nn.Linear(4, out_channels))
            def make_seg(in_channels, out_channels):
                return torch.nn.Conv2d(in_channels, out_channels, 1)
            """
        )
    )
    info = tmp_path / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[liverfat.models]\ntinynet = tinyplug:make\nbroken = tinyplug:missing\n"
        "[liverfat.segmentation_models]\ntinyseg = tinyplug:make_seg\n"
        "[liverfat.classification_models]\ntinyclass = tinyplug:make\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registry.ENTRY_POINT_GROUP == "liverfat.models"
    assert "tinynet" in registry.model_names()
    net = registry.build_model("tinynet", 2, 3)
    assert net(torch.rand(1, 2, 16, 16)).shape == (1, 3)
    assert registry.gradcam_layer("tinynet", net) == "0"
    with pytest.raises(LiverfatError, match="failed to load"):
        registry.build_model("broken", 1, 1)
    assert "tinyseg" not in registry.model_names()
    assert "tinyseg" in registry.model_names("segmentation")
    seg = registry.build_model("tinyseg", 2, 5, task="segmentation")
    assert seg(torch.rand(1, 2, 8, 8)).shape == (1, 5, 8, 8)
    assert "tinyclass" in registry.model_names("classification")
    assert "tinyclass" not in registry.model_names()
    assert registry.build_model("tinyclass", 1, 4, task="classification")(
        torch.rand(2, 1, 16, 16)
    ).shape == (2, 4)
    sys.modules.pop("tinyplug", None)
