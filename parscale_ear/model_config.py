"""The configs of whole models, one shape for all: what every model holds (`ModelConfig`: its name, classes, LiteVAE
and sampling defaults) plus the config of its generator in a field of its own, ParScale-EAR's coarse/fine hybrid
(`ParScaleEARConfig.hybrid`) or a DiT peer (`PeerConfig.dit`). A config is saved with the weights and is enough to
rebuild the model (`ParScaleEAR(config)`, pipeline.py); `from_dict` also reads the configs earlier versions stored."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar

from .baselines.dit import DiTBaseline, DiTConfig
from .checks import check_field_types, check_int, check_real, nested_config
from .hybrid import CoarseFineHybrid, HybridConfig, stored_hybrid
from .latent_generator import LatentGenerator
from .vae import LiteVAEConfig


@dataclass
class ModelConfig:
    """A model: a LiteVAE (`vae`) and a generator of its latents, whose config a subclass holds in its field
    `GENERATOR` and builds as `GENERATOR_CLASS`, with the defaults `generate` samples at."""

    GENERATOR: ClassVar[str]  # the field holding the generator's config
    GENERATOR_CLASS: ClassVar[type]  # the LatentGenerator it builds (its `config_class` is the field's type)
    WHAT: ClassVar[str]  # what the model is, for errors and the model card

    name: str = "custom"
    num_classes: int = 10  # 0 = unconditional
    vae: LiteVAEConfig = field(default_factory=LiteVAEConfig)
    cfg: float = 1.0  # default classifier-free guidance scale for `generate`
    temperature: float = 1.0  # default temperature (what it scales in each kind of model: latent_generator.py)

    def __post_init__(self):
        if type(self) is ModelConfig:
            raise TypeError("ModelConfig holds what every model shares; build ParScaleEARConfig or PeerConfig")
        name = type(self).__name__
        self.vae = nested_config(LiteVAEConfig, self.vae, f"{name}.vae")
        generator = nested_config(self.GENERATOR_CLASS.config_class, self.generator, f"{name}.{self.GENERATOR}")
        setattr(self, self.GENERATOR, generator)
        check_field_types(self)
        check_int(self.num_classes, f"{name}.num_classes", minimum=0)
        check_real(self.cfg, f"{name}.cfg", minimum=0.0)
        check_real(self.temperature, f"{name}.temperature", minimum=0.0)

    @property
    def generator(self):
        """The generator's config."""
        return getattr(self, self.GENERATOR)

    def make_generator(self) -> LatentGenerator:
        """The generator of this config, with fresh weights."""
        return self.GENERATOR_CLASS(self.generator, self.vae.latent_shape, self.num_classes)

    def describe(self) -> str:
        return self.WHAT

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        """A stored dict in this version's fields (earlier versions stored some others)."""
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """The config a dict of its fields describes, one written by an earlier version included."""
        if not isinstance(d, dict):
            raise ValueError(f"config: expected a dict of config fields, got {type(d).__name__}")
        try:
            return cls(**cls.upgrade(d))
        except TypeError as e:  # unknown or missing keys
            raise ValueError(f"config does not describe a {cls.WHAT}: {e}") from None


@dataclass
class ParScaleEARConfig(ModelConfig):
    """ParScale-EAR: the LiteVAE and the coarse/fine hybrid of generation stages (hybrid.py)."""

    GENERATOR: ClassVar[str] = "hybrid"
    GENERATOR_CLASS: ClassVar[type] = CoarseFineHybrid
    WHAT: ClassVar[str] = "ParScaleEAR model"

    hybrid: HybridConfig = field(default_factory=HybridConfig)

    def describe(self) -> str:
        return f"ParScale-EAR, hybrid mode {self.hybrid.mode}"

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        """0.2 stored `dit: null` beside the hybrid; a stored hybrid reads as it did (`hybrid.stored_hybrid`)."""
        if d.get("dit") is not None:
            raise ValueError("config describes a DiT peer, not a ParScaleEAR model (read it with "
                             "parscale_ear.presets.config_from_dict)")
        d = {k: v for k, v in d.items() if k != "dit"}
        if isinstance(d.get("hybrid", {}), dict):
            d["hybrid"] = stored_hybrid(d.get("hybrid", {}), f"{cls.__name__}.hybrid")
        return d


@dataclass
class PeerConfig(ModelConfig):
    """A peer: the project's LiteVAE and a DiT (`dit`, baselines/dit.py) in the generator's place."""

    GENERATOR: ClassVar[str] = "dit"
    GENERATOR_CLASS: ClassVar[type] = DiTBaseline
    WHAT: ClassVar[str] = "peer model"

    name: str = "dit-s"
    dit: DiTConfig = field(default_factory=DiTConfig)

    def describe(self) -> str:
        return f"DiT peer (diffusers), objective {self.dit.objective}"

    @classmethod
    def upgrade(cls, d: dict) -> dict:
        """0.2 stored a peer as ParScale-EAR's fields with `dit` set: its unused hybrid goes."""
        return {k: v for k, v in d.items() if k != "hybrid"}
