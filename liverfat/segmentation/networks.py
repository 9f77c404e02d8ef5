"""The segmentation networks: 2D U-Nets from MONAI, registered as ``segmentation`` models.

Factories take ``(in_channels, out_channels)`` plus the engine's ``features`` (the channels of
the six BasicUNet stages: encoder 1-5, last decoder) and give per-pixel class scores
(batch, out_channels, height, width). Inputs must be a multiple of 16 pixels on each side (four
2x2 poolings, same padding).

- ``unet``: MONAI's BasicUNet (two 3x3 conv-norm-LeakyReLU per block, max pooling, transposed-
  convolution upsampling), with dropout 0.5 after the two deepest encoder blocks as in the
  Uppsala thesis;
- ``residual_unet``: MONAI's UNet with two residual units per block (short skips) and strided
  convolutions for the four downsamplings, the same channels, dropout in every unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from liverfat.nn.registry import register_model

#: BasicUNet stage channels: a CPU-sized default (MONAI's own default is 32 32 64 128 256 32).
DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)
DEEP_DROPOUT = 0.5


def unet(
    in_channels: int, out_channels: int, *, features: Sequence[int] = DEFAULT_FEATURES
) -> nn.Module:
    """MONAI BasicUNet with :data:`DEEP_DROPOUT` after the two deepest encoder blocks."""
    from monai.networks.nets import BasicUNet

    net = BasicUNet(
        spatial_dims=2, in_channels=in_channels, out_channels=out_channels, features=features
    )
    net.down_3 = nn.Sequential(net.down_3, nn.Dropout2d(DEEP_DROPOUT))
    net.down_4 = nn.Sequential(net.down_4, nn.Dropout2d(DEEP_DROPOUT))
    return net


def residual_unet(
    in_channels: int, out_channels: int, *, features: Sequence[int] = DEFAULT_FEATURES
) -> nn.Module:
    """MONAI UNet, two residual units per block, channels ``features[:5]``, dropout 0.1."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=tuple(features[:5]),
        strides=(2, 2, 2, 2),
        num_res_units=2,
        norm="instance",
        dropout=0.1,
    )


FACTORIES = {"unet": unet, "residual_unet": residual_unet}
for _name, _factory in FACTORIES.items():
    register_model(_name, _factory, task="segmentation")
