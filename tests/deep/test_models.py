"""Model registry: built-ins, entry-point plug-ins, local pretrained weights."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from liverfat.deep import models
from liverfat.errors import LiverfatError


def test_resnet50_shape_and_one_training_step():
    net = models.build_model("resnet50", 1, 4)
    conv1 = net.conv1
    assert conv1.stride == (2, 2) and conv1.kernel_size == (7, 7)
    n_params = sum(p.numel() for p in net.parameters())
    assert 23.4e6 < n_params < 23.6e6  # torchvision's ResNet50 minus its 1000-class head: 23.5 M
    x = torch.rand(2, 1, 88, 188)
    out = net(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert net.conv1.weight.grad is not None


def test_densenet121_and_small_cnn_shapes():
    assert models.build_model("densenet121", 3, 2)(torch.rand(1, 3, 64, 64)).shape == (1, 2)
    assert models.build_model("small_cnn", 1, 6)(torch.rand(3, 1, 44, 94)).shape == (3, 6)
    with pytest.raises(LiverfatError, match="unknown model"):
        models.build_model("nope", 1, 1)


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
            """
        )
    )
    info = tmp_path / "tinyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        "[liverfat.models]\ntinynet = tinyplug:make\nbroken = tinyplug:missing\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tinynet" in models.model_names()
    net = models.build_model("tinynet", 2, 3)
    assert net(torch.rand(1, 2, 16, 16)).shape == (1, 3)
    assert models.gradcam_layer("tinynet", net) == "0"
    with pytest.raises(LiverfatError, match="failed to load"):
        models.build_model("broken", 1, 1)
    sys.modules.pop("tinyplug", None)


def test_pretrained_weights_safetensors_and_torch(tmp_path):
    from safetensors.torch import save_file

    source = models.build_model("small_cnn", 1, 5)
    save_file(
        {k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    torch.save(source.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        target = models.build_model("small_cnn", 1, 2)  # other head size: skipped
        skipped = models.load_pretrained(target, tmp_path / name)
        assert set(skipped) == {"fc.weight", "fc.bias"}
        assert torch.equal(target.features[0][0].weight, source.features[0][0].weight)
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    with pytest.raises(LiverfatError, match="cannot be read"):
        models.load_pretrained(models.build_model("small_cnn", 1, 2), tmp_path / "bad.pt")
