"""Built-in networks: shapes, the ResNet50 of the UK Biobank studies, one training step."""

from __future__ import annotations

import pytest
import torch

from liverfat.nn import architectures
from liverfat.nn.registry import build_model


def test_resnet50_shape_and_one_training_step():
    net = build_model("resnet50", 1, 4)
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
    assert build_model("densenet121", 3, 2)(torch.rand(1, 3, 64, 64)).shape == (1, 2)
    assert build_model("small_cnn", 1, 6)(torch.rand(3, 1, 44, 94)).shape == (3, 6)


def test_patch_densenet_keeps_a_16_pixel_patch_and_stays_small():
    """A 3x3 stride-1 stem and two transitions: 16 -> 8 -> 4 pixels; 179,348 parameters."""
    net = architectures.patch_densenet(1, 4)
    assert net.features.conv0.kernel_size == (3, 3) and net.features.conv0.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())
    sides = {}
    for name in ("denseblock1", "denseblock2", "denseblock3"):
        getattr(net.features, name).register_forward_hook(
            lambda _m, _i, out, name=name: sides.__setitem__(name, out.shape[-1])
        )
    out = net(torch.rand(5, 1, 16, 16))
    assert out.shape == (5, 4)
    assert sides == {"denseblock1": 16, "denseblock2": 8, "denseblock3": 4}
    assert sum(p.numel() for p in net.parameters()) == 179_348
    out.sum().backward()
    assert net.features.conv0.weight.grad is not None
    assert architectures.patch_densenet(3, 2)(torch.rand(2, 3, 4, 4)).shape == (2, 2)


def test_factories_are_usable_without_the_registry():
    """Any engine may call a factory directly: (in_channels, out_channels) -> (batch, out)."""
    net = architectures.resnet18(2, 3)
    assert net(torch.rand(2, 2, 64, 64)).shape == (2, 3)
    assert isinstance(architectures.small_cnn(1, 1), architectures.SmallCNN)


@pytest.mark.parametrize("name", ["attention_readout", "attention_unet"])
def test_attention_readouts_read_the_mean_of_the_attended_cells(name):
    net = build_model(name, 1, 2).eval()
    x = torch.rand(3, 1, 45, 94)
    # uniform scores: each output is alpha * (mean of the 4 x 4 cell means) + beta + context 0
    torch.nn.init.zeros_(net.score.weight)
    torch.nn.init.zeros_(net.score.bias)
    cells = torch.nn.functional.avg_pool2d(x, 4)  # 11 x 23 cells, the score grid
    with torch.no_grad():
        expected = 5.0 * cells.mean(dim=(1, 2, 3))
        assert torch.allclose(net(x), expected[:, None].expand(3, 2), atol=1e-5)
        # scores peaked on one cell read that cell
        scores = torch.zeros(1, 2, 11, 23)
        scores[..., 2, 7] = 50.0
        net.score = _Fixed(scores)
        assert torch.allclose(net(x), 5.0 * cells[:, 0, 2, 7][:, None].expand(3, 2), atol=1e-4)


class _Fixed(torch.nn.Module):
    """A score layer returning the same scores for every input."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(features.shape[0], -1, -1, -1)
