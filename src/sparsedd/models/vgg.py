"""VGG-16 with batch norm in its CIFAR form (OpenLTH's ``cifar_vgg_16``, as used by He et al. 2022).

Thirteen 3x3 convolutions (padding 1, with bias) each followed by BN and ReLU, max-pools
between the stages, then a global average pool to 512 features and one Linear(512, classes):
14,728,266 parameters for 10 classes. As in OpenLTH the plan has no max-pool after the last
stage: at 32x32 the features are 2x2 there and are averaged (OpenLTH's ``AvgPool2d(2)``; an
adaptive pool here, which is the same at 32x32 and also accepts larger inputs such as 64x64).
Inputs [B, C, H, W] need H, W >= 16 (four 2x2 max-pools); ``width`` scales every stage (64: the paper's).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SparseddError

VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class ConvModule(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    def __init__(self, plan: tuple, num_classes: int, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(cin, spec))
                cin = spec
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(self.layers(x)).flatten(1))

    def prunable_names(self, layers: str = "default") -> list[str]:
        """Conv weights (``default``, ``conv``, ``hidden``: the paper prunes VGG's convs only) or, with ``all``, also the fc weight."""
        convs = [f"{m}.weight" for m, mod in self.named_modules() if isinstance(mod, nn.Conv2d)]
        if layers in ("default", "conv", "hidden"):
            return convs
        if layers == "all":
            return convs + ["fc.weight"]
        raise SparseddError(f"prune.layers {layers!r} does not apply to VGG-16; use default, all, hidden or conv")


def vgg16(num_classes: int, in_channels: int = 3, width: int = 64) -> VGG:
    plan = tuple(s if s == "M" else s * width // 64 for s in VGG16_PLAN)
    return VGG(plan, num_classes, in_channels)
