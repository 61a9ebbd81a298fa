"""ParScale-EAR: LiteVAE + coarse/fine hybrid + energy-score multi-stream autoregression for fast image generation."""
__version__ = "0.1.0"

from .generator import EnergyGenerator, EnergyHead, GeneratorConfig
from .hybrid import CoarseFineHybrid, HybridConfig
from .losses import energy_score_loss
from .pipeline import ParScaleEAR, ParScaleEARConfig
from .presets import create_model, get_config, list_models
from .vae import LiteVAE, LiteVAEConfig, haar_dwt, haar_idwt

__all__ = [
    "CoarseFineHybrid", "EnergyGenerator", "EnergyHead", "GeneratorConfig", "HybridConfig", "LiteVAE",
    "LiteVAEConfig", "ParScaleEAR", "ParScaleEARConfig", "create_model", "energy_score_loss", "get_config",
    "haar_dwt", "haar_idwt", "list_models",
]
