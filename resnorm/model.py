"""The CIFAR-style ResNet of He et al. (2016), section 4.2: 6n+2 weighted layers.

A 3x3 stem, three stages of ``n`` basic blocks at 16/32/64 channels (the first block of stages
2 and 3 halves the resolution), global average pooling and one linear layer. Shortcuts are
the paper's option A (identity, with stride-2 subsampling and zero-padded channels where the
shape changes), so the model has exactly 6n+2 weighted layers and the shortcuts add no
parameters and no normalisation of their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from resnorm.norms import DEFAULT_GROUPS, NormLayer, get_norm, norm_options

STAGE_CHANNELS = (16, 32, 64)


def depth(n: int) -> int:
    """Weighted layers of the ResNet with ``n`` blocks per stage: a stem, 2n convolutions in each of
    three stages, one linear layer."""
    return 6 * n + 2


def _conv3x3(in_planes: int, planes: int, stride: int, norm: nn.Module) -> nn.Conv2d:
    # A conv followed by a norm with a shift does not need a bias; with no norm it does.
    return nn.Conv2d(in_planes, planes, 3, stride, padding=1, bias=isinstance(norm, nn.Identity))


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm, plus the (option A) shortcut, then relu."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer) -> None:
        super().__init__()
        self.norm1 = norm_layer(planes)
        self.conv1 = _conv3x3(in_planes, planes, stride, self.norm1)
        self.norm2 = norm_layer(planes)
        self.conv2 = _conv3x3(planes, planes, 1, self.norm2)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))  # zeros for the new channels
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        n: blocks per stage; depth is 6n+2 (n=2 gives ResNet-14).
        num_classes: outputs of the final linear layer.
        norm_layer: ``channels -> nn.Module``, built once per normalised conv.
        in_channels: channels of the input images (1 for grayscale, 3 for RGB).
        mean, std: per-channel statistics of the training images; inputs are images scaled to
            [0, 1] and the model standardises them itself, so a saved model takes raw images.
    """

    def __init__(
        self,
        n: int,
        num_classes: int,
        norm_layer: NormLayer,
        in_channels: int = 3,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        mean = [0.0] * in_channels if mean is None else list(mean)
        std = [1.0] * in_channels if std is None else list(std)
        if len(mean) != in_channels or len(std) != in_channels:
            raise ValueError(f"mean and std need {in_channels} values each, got {mean} and {std}")
        self.register_buffer("input_mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("input_std", torch.tensor(std).view(1, -1, 1, 1))

        self.depth = depth(n)
        self.in_channels = in_channels
        width = STAGE_CHANNELS[0]
        self.norm1 = norm_layer(width)
        self.conv1 = _conv3x3(in_channels, width, 1, self.norm1)
        stages = []
        for i, planes in enumerate(STAGE_CHANNELS):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(width, planes, stride, norm_layer))
                width = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(width, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    input_mean: torch.Tensor  # buffers (register_buffer), (1, C, 1, 1)
    input_std: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.input_mean) / self.input_std  # (N, C, H, W), images in [0, 1]
        x = F.relu(self.norm1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 64, H/4, W/4)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)  # (N, 64)
        return self.fc(x)


def resnet(
    n: int,
    num_classes: int,
    norm: str | NormLayer,
    in_channels: int = 3,
    groups: int = DEFAULT_GROUPS,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ResNet:
    """Build a ResNet-(6n+2) with the norm given as a constructor, or by name (see ``resnorm.norms.NORMS``;
    ``groups`` is group norm's option). Training builds it from ``TrainConfig.norm_layer()``."""
    norm_layer = norm if callable(norm) else get_norm(norm, **norm_options(norm, groups=groups))
    return ResNet(n, num_classes, norm_layer, in_channels, mean, std)
