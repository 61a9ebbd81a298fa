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


def v_stage(**kw) -> dict:
    """A tiny v-mean energy-flow stage config (the shipped design's kind) for tiny-32-flow overrides."""
    return dict(kind="flow", width=32, depth=1, heads=2, streams=2, prefix_len=2, head_width=32, head_depth=1,
                noise_dim=8, max_steps=4, backbone_noise=False, mean_weight=1.0, samples=3,
                time_dist="logit_normal", **kw)


def interrupt_after(monkeypatch, calls: int):
    """Make a training run die (as if killed) inside its step `calls + 1`, after the checkpoint at `calls`."""
    from parscale_ear.train import loop

    real, count = loop.ema_update, {"n": 0}

    def dying(*a, **k):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(loop, "ema_update", dying)


def tiny_peer(name: str = "dit-s", **dit):
    """A peer model (a pipeline with a DiT generator) with a one-layer DiT on the tiny-32 LiteVAE."""
    import parscale_ear as pe

    return pe.create_model(name, vae=pe.get_config("tiny-32").vae, dit={"num_layers": 1, "heads": 2, "head_dim": 8, **dit})
