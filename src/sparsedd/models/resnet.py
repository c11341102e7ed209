"""ResNets for image data: ResNet-18 in its CIFAR form and ResNet-101 for Tiny ImageNet.

Both use a CIFAR-style stem: one 3x3 stride-1 convolution (64 channels) + BN + ReLU and no
max-pool, as in He et al. (ICML 2022)'s code (OpenLTH's ``cifar_pytorch_resnet`` and
``tinyimagenet_resnet``): at 32x32 or 64x64 the ImageNet stem (7x7 stride-2 conv + 3x3
max-pool) would shrink the input 4x before the first block. The input's channels (3 for colour,
1 for MNIST) and the first stage's width (64; ``model.width`` narrows the whole net) are arguments. Blocks follow torchvision
(ResNet v1.5: a bottleneck strides in its 3x3 conv), with 1x1 conv + BN shortcuts where the
shape changes, and end in a global (adaptive) average pool and one linear layer, so any input
[B, 3, H, W] with H, W >= 8 works. Parameter names follow torchvision (``conv1``, ``bn1``,
``layer1.0.conv1``, ``layer2.0.downsample.0``, ``fc``). Convolutions have no bias.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SparseddError


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = _shortcut(cin, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv1x1(cin, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = _conv1x1(width, cout)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block: type[BasicBlock] | type[Bottleneck], depths: tuple[int, ...],
                 num_classes: int, width: int = 64, in_channels: int = 3):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        cin = width
        stages = []
        for i, depth in enumerate(depths):
            w = width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))

    def prunable_names(self, layers: str = "default") -> list[str]:
        """Conv and linear weights (never biases or BN parameters).

        ``default`` and ``all``: every conv weight and the fc weight; ``conv``: conv weights only;
        ``hidden``: all but the final linear layer (here the same as ``conv``).
        """
        convs = [f"{m}.weight" for m, mod in self.named_modules() if isinstance(mod, nn.Conv2d)]
        if layers in ("default", "all"):
            return convs + ["fc.weight"]
        if layers in ("conv", "hidden"):
            return convs
        raise SparseddError(f"prune.layers {layers!r} does not apply to a ResNet; use default, all, hidden or conv")


def resnet18(num_classes: int, in_channels: int = 3, width: int = 64) -> ResNet:
    """CIFAR ResNet-18: 11,173,962 parameters for 10 classes (3 channels, width 64)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, width, in_channels)


def resnet101(num_classes: int, in_channels: int = 3, width: int = 64) -> ResNet:
    """ResNet-101 (bottleneck [3, 4, 23, 3]) with the CIFAR-style stem: 42,902,280 parameters for 200 classes."""
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, width, in_channels)
