"""Helpers shared by the tests."""
import torch
from torch import nn


def perturb_(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter so zero-initialised layers stop being degenerate."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return model


class StandIn(nn.Module):
    """Tiny random conv net with InceptionV3's interface: [0, 1] (B, 3, H, W) -> [(B, D, 1, 1)]."""

    def __init__(self, dim: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, dim, 3)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return [torch.tanh(self.conv(x)).mean(dim=(2, 3), keepdim=True) * 4]
