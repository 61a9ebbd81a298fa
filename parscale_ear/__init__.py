"""ParScale-EAR: fast class-conditional image generation in a few network passes.

A LiteVAE (Haar-wavelet encoder) and a coarse/fine hybrid of generation stages, each drawing a whole stage per pass
from EAR's energy-score head and run as P parallel streams (ParScale). `ParScaleEAR.from_pretrained()` loads the
shipped Fashion-MNIST model; `create_model(name)` builds a preset; `docs/DESIGN.md` explains the parts.

The public names below load on first use (PEP 562), so `parscale-ear --help` and `--version` answer
without importing torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.3.0"

_EXPORTS = {
    "EnergyGenerator": "generator", "EnergyHead": "energy_head", "GeneratorConfig": "stage",
    "MARConfig": "generator", "FlowConfig": "energy_flow",
    "CoarseFineHybrid": "hybrid", "HybridConfig": "hybrid",
    "energy_score_loss": "energy_head",
    "ParScaleEAR": "pipeline", "create_model": "pipeline", "LatentGenerator": "latent_generator",
    "ModelConfig": "model_config", "ParScaleEARConfig": "model_config", "PeerConfig": "model_config",
    "get_config": "presets", "list_models": "presets",
    "LiteVAE": "vae", "LiteVAEConfig": "vae",
    "haar_dwt": "wavelets", "haar_idwt": "wavelets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'parscale_ear' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
