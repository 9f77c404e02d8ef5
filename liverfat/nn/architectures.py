"""Built-in 2D networks: generic CNN factories ``factory(in_channels, out_channels)``.

Each maps a batch (batch, in_channels, height, width) to (batch, out_channels): image-level
outputs for regression or classification, whichever engine uses them. Built from MONAI (pure
torch; torchvision is not needed) except :class:`SmallCNN`, :class:`AttentionReadout` and
:class:`AttentionUNet`; :class:`PatchDenseNet` assembles MONAI's dense blocks for 16 x 16
pixel ROI patches. Weights start from scratch (see :mod:`liverfat.nn.weights` for a local
pretrained file). Names and Grad-CAM layers are given to them in :mod:`liverfat.nn.registry`.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


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
    """:class:`SmallCNN` with its default width (16 channels in the first stage)."""
    return SmallCNN(in_channels, out_channels)


class _CellReadout(nn.Module):
    """The readout of the attention networks: ``alpha * sum(softmax(scores) * value) + beta``
    plus a linear term of the pooled features, ``value`` being the input's first channel
    averaged over each 4 x 4-pixel cell of the score grid."""

    def _add_readout(self, channels: int, out_channels: int) -> None:
        """``alpha`` (5), ``beta`` (0) and the context term (0) of ``channels`` pooled features;
        created after the networks' convolutions, so their initial weights keep the seed's."""
        self.alpha = nn.Parameter(torch.full((out_channels,), 5.0))
        self.beta = nn.Parameter(torch.zeros(out_channels))
        self.context = nn.Linear(channels, out_channels)
        nn.init.zeros_(self.context.weight)
        nn.init.zeros_(self.context.bias)

    def _read(self, scores: torch.Tensor, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The outputs from ``scores`` (batch, out, cells y, cells x) on the input ``x``, with
        ``pooled`` the features the context term averages."""
        weights = torch.softmax(scores.flatten(2), dim=2)  # (batch, out, cells)
        # the value on the score grid (4 x 4 pixel means; two floor-halving poolings give the
        # same grid): on the phantom this reads better than scores interpolated to every pixel
        # (out-of-fold R² 0.84 vs 0.78, docs/deep.md)
        value = nn.functional.avg_pool2d(x[:, :1], 4)
        readout = (weights * value.flatten(2)).sum(dim=2)
        return self.alpha * readout + self.beta + self.context(pooled.mean(dim=(2, 3)))


class AttentionReadout(_CellReadout):
    """Locate, then read: an attention-pooled readout of the input's first channel.

    For formats whose first channel is a quantitative map (the fat fraction of the liver-fat
    format, 0-1 for 0-50 %), the quantity of an organ is a weighted mean of that map where the
    organ lies. A small CNN (three conv-norm-ReLU stages, two 2x2 poolings) scores every cell of
    its 4 x 4-pixel grid; each output ``k`` is ``alpha_k * sum(softmax(score_k) * value) +
    beta_k`` plus a linear term of the globally pooled features, where ``value`` is the input's
    first channel averaged over each cell. Outputs that are not a quantity of the map (a
    log-variance) learn to use the pooled features instead. ``alpha`` starts at 5: a readout
    of 0-1 (0-50 %) against a target standardised with an SD of about 10 percentage points.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        layers, channels = [], in_channels
        for stage, out in enumerate((width, 2 * width, 4 * width)):
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers)
        self.score = nn.Conv2d(channels, out_channels, 1)
        self._add_readout(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return self._read(self.score(features), x, features)


def attention_readout(in_channels: int, out_channels: int) -> nn.Module:
    """:class:`AttentionReadout` with 16 channels in its first stage."""
    return AttentionReadout(in_channels, out_channels)


def _conv_stage(in_channels: int, out_channels: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionUNet(_CellReadout):
    """:class:`AttentionReadout` whose cell scores see the whole liver: a small U-Net.

    The three stages of :class:`AttentionReadout` (to the 4 x 4-pixel cell grid) are followed by
    a fourth at 1/8 (two convolutions, the second dilated), upsampled back onto the cell grid
    and merged with the third stage's features before scoring. The readout's cells then know
    their surroundings some 70 input pixels across instead of 15, which is what tells a cell
    inside the liver from one on its edge: on the phantom at 3000 iterations the out-of-fold
    R² against truth rose from 0.867 to 0.892, and to 0.955 with fat-fraction scaling, which
    did not help :class:`AttentionReadout` (docs/deep.md). The readout, the
    ``alpha`` / ``beta`` and the context term of the pooled (1/8) features are as there.
    """

    def __init__(self, in_channels: int, out_channels: int, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.ModuleList(
            [
                _conv_stage(in_channels, width),
                _conv_stage(width, 2 * width),
                _conv_stage(2 * width, 4 * width),
            ]
        )
        self.bottom = nn.Sequential(
            _conv_stage(4 * width, 4 * width), _conv_stage(4 * width, 4 * width, dilation=2)
        )
        self.merge = _conv_stage(8 * width, 4 * width)
        self.score = nn.Conv2d(4 * width, out_channels, 1)
        self._add_readout(4 * width, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = nn.functional.max_pool2d
        cells = self.encoder[2](pool(self.encoder[1](pool(self.encoder[0](x), 2)), 2))
        bottom = self.bottom(pool(cells, 2))
        upsampled = nn.functional.interpolate(bottom, size=cells.shape[2:], mode="nearest")
        scores = self.score(self.merge(torch.cat([cells, upsampled], dim=1)))
        return self._read(scores, x, bottom)


def attention_unet(in_channels: int, out_channels: int) -> nn.Module:
    """:class:`AttentionUNet` with 16 channels in its first stage."""
    return AttentionUNet(in_channels, out_channels)


class PatchDenseNet(nn.Module):
    """A DenseNet for small square patches (e.g. 16 x 16 pixel liver ROIs), from MONAI's dense
    blocks and transitions.

    ``features``: a 3x3 stride-1 stem convolution (``init_features`` channels; no 7x7 stride-2
    convolution or max-pool, which would leave almost nothing of a 16 x 16 patch), then dense
    blocks of ``block_config`` layers (growth rate ``growth_rate``, bottleneck ``bn_size`` x
    growth) with a transition after every block but the last (BN, ReLU, 1x1 convolution halving
    the channels, 2x2 average pooling: 16 -> 8 -> 4 pixels), then BN and ReLU. The head is global
    average pooling, dropout and a linear layer. Any input side that survives the poolings
    (at least 4 pixels for three blocks) works; ``features.denseblock3`` is the Grad-CAM layer.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        init_features: int = 32,
        growth_rate: int = 16,
        block_config: tuple[int, ...] = (4, 4, 4),
        bn_size: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        from monai.networks.nets.densenet import _DenseBlock, _Transition

        layers: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(in_channels, init_features, 3, padding=1, bias=False)),
        ]
        channels = init_features
        for number, n_layers in enumerate(block_config, start=1):
            block = _DenseBlock(2, n_layers, channels, bn_size, growth_rate, dropout_prob=0.0)
            layers.append((f"denseblock{number}", block))
            channels += n_layers * growth_rate
            if number < len(block_config):
                layers.append((f"transition{number}", _Transition(2, channels, channels // 2)))
                channels //= 2
        layers += [("norm5", nn.BatchNorm2d(channels)), ("relu5", nn.ReLU(inplace=True))]
        self.features = nn.Sequential(OrderedDict(layers))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


def patch_densenet(in_channels: int, out_channels: int) -> nn.Module:
    """:class:`PatchDenseNet` with its defaults: stem 32, growth 16, blocks 4-4-4 (179,348
    parameters for one input channel and four classes), for (batch, in_channels, 16, 16) ROI
    patches."""
    return PatchDenseNet(in_channels, out_channels)
