"""Fully connected ReLU networks: LeNet-300-100 and the MNIST-1D MLP."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SparseddError


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], num_classes: int):
        super().__init__()
        widths = (in_features, *hidden, num_classes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    @property
    def widths(self) -> tuple[int, ...]:
        """Input features, then every layer's units (the architecture, as a key for measurements)."""
        return (self.layers[0].in_features, *(layer.out_features for layer in self.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)

    def prunable_names(self, layers: str = "default") -> list[str]:
        """Weights that may be pruned; biases never. ``default`` and ``hidden`` keep the output layer dense."""
        names = [f"layers.{i}.weight" for i in range(len(self.layers))]
        if layers in ("default", "hidden"):
            return names[:-1]
        if layers == "all":
            return names
        raise SparseddError(f"prune.layers {layers!r} does not apply to an MLP; use default, hidden or all")
