"""FlowConfig: the settings of a flow stage (EnergyFlowGenerator, energy_flow.py): GeneratorConfig's shared fields
plus how the stage is trained (the energy score of its draws, the rectified-flow velocity of a mean head, or MeanFlow's
average velocity), where its noise enters, its training times and its sampler."""
from __future__ import annotations

import math
from dataclasses import dataclass

from .checks import check_int, check_real
from .solvers import check_solver
from .stage import GeneratorConfig

OBJECTIVES = ("flow", "energy", "meanflow", "distance")
POS_EMBEDS = ("learned", "sincos")


@dataclass
class FlowConfig(GeneratorConfig):
    """A few-step energy-score stage (EnergyFlowGenerator): GeneratorConfig's shared fields plus these."""

    kind: str = "flow"
    samples: int = 2  # m samples per target in the energy score (all pairs repel)
    backbone_noise: bool = True  # False: the noise enters only the EAR head (the backbone runs once per example)
    # > 0: a linear mean head on the (noise-free) hidden state predicts v = eps - x0, trained by the rectified-flow
    # MSE with this weight (mean x0 = x_t - t v: at temperature 0 the stage samples as a flow solver), and a sample
    # is mean + head residual, the residual trained by the energy score; needs backbone_noise False
    mean_weight: float = 0.0
    # AdaLN blocks after the noise enters the residual path (mean head only): attention couples the
    # residual draws of neighbouring tokens; the m draws re-run only these blocks and the head
    residual_blocks: int = 0
    # objective "flow" with a mean head only: share of the energy score's gradient that reaches the backbone through
    # the residual path (1: all of it; 0: the backbone learns from the mean's MSE alone, the residual path from the score)
    residual_grad: float = 1.0
    time_dist: str = "uniform"  # training t: "uniform" or "logit_normal" (sigmoid of N(0, 1), SD3)
    global_weight: float = 1.0  # weight of the whole-stage energy score beside the per-token one
    one_step_prob: float = 0.25  # share of training draws at t = 1 (the one-pass case)
    max_steps: int = 8  # per-image noise is drawn for this many steps
    # mean-head stages, sampling: "euler" (DDIM with the predicted x0: one pass a step) or "heun" (a second pass at
    # the step's end corrects it, the trapezoid of the two velocities, on every step but the last and the steps whose
    # x0 the energy head draws: 2 steps - 1 passes at temperature 0)
    solver: str = "euler"
    # mean-head stages, training: "flow" (the mean learns by the velocity MSE, the residual path by the energy score
    # around the detached mean), "energy" (the energy score of the drawn x0 = mean + residual trains the whole
    # stage, every gradient kept; mean_weight then weights an optional velocity MSE beside it) or "meanflow" (a plain
    # stage whose mean head learns MeanFlow's average velocity u over [r, t], weighted by mean_weight: one pass a step,
    # one pass a sample at one step; its time embedding of t - r starts at zero, so `--init` from a flow stage starts
    # as that flow)
    # "distance": a one-pass generator, the mean head's x0 at t = 1 trained by the energy distance to the data of
    # each class in multi-scale pooled features (energy_distance.py); sampled in one step
    objective: str = "flow"
    meanflow_ratio: float = 0.25  # meanflow: share of training draws with r < t (the rest r = t, flow matching)
    loss_power: float = 1.0  # meanflow: adaptive weight 1 / (||err||^2 + 1e-3)^power of each example (the paper's p)
    time_mean: float = 0.0  # time_dist "logit_normal": t = sigmoid(N(time_mean, 1)) (MeanFlow: -0.4)
    # False: a plain flow stage, the mean head alone (trained by the velocity MSE, sampled at temperature 0): no
    # energy head and no residual draws, so a teacher pays nothing for a head its sampler never uses
    energy_head: bool = True
    # sampling: the time grid's shift (SD3's; > 1 spends more steps at high noise, 1 the even grid)
    time_shift: float = 1.0
    # the time embedding sees time_scale * t: 1000 as DiT's steps, or 1 as SiT and MeanFlow, which keeps d/dt of the
    # embedding bounded (a MeanFlow stage's target carries (t - r) du/dt: at 1000 its error did not fall)
    time_scale: float = 1000.0
    # "learned" positions (one vector per token) or "sincos": fixed 2-D sine-cosine positions on the (square) token grid, as DiT's
    pos_embed: str = "learned"
    # True: every block embeds time and class itself (its own time MLP and class table, as diffusers' DiT does);
    # False: one embedding shared by all blocks (DiT's paper)
    block_condition: bool = False
    # mode "joint" (one stage over coarse and fine tokens): the coarse tokens' time is t ** coarse_lead, so above 1
    # they are less noisy than the fine ones at every step (the coarse structure settles first, inside each pass);
    # 1: one time for all tokens. Plain flow stages only.
    coarse_lead: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.kind != "flow":
            raise ValueError(f"FlowConfig: kind must be 'flow', got {self.kind!r}")
        check_int(self.samples, "FlowConfig.samples", minimum=2)
        check_int(self.max_steps, "FlowConfig.max_steps")
        check_real(self.global_weight, "FlowConfig.global_weight", minimum=0.0)
        check_real(self.mean_weight, "FlowConfig.mean_weight", minimum=0.0)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"FlowConfig: objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.objective == "energy" and self.backbone_noise:
            raise ValueError("FlowConfig: objective 'energy' needs backbone_noise False (a mean head; the noise enters "
                             "the residual path)")
        if self.has_mean_head and self.backbone_noise:
            raise ValueError("FlowConfig: mean_weight > 0 needs backbone_noise False (the mean must not depend on the noise)")
        check_int(self.residual_blocks, "FlowConfig.residual_blocks", minimum=0)
        if self.residual_blocks and not self.has_mean_head:
            raise ValueError("FlowConfig: residual_blocks > 0 needs a mean head (mean_weight > 0)")
        if not 0 <= self.residual_grad <= 1:
            raise ValueError(f"FlowConfig: residual_grad must be in [0, 1], got {self.residual_grad}")
        if self.residual_grad < 1 and not self.has_mean_head:
            raise ValueError("FlowConfig: residual_grad < 1 needs a mean head (mean_weight > 0), "
                             "or the backbone would get no gradient")
        if self.residual_grad != 1 and self.objective == "energy":
            raise ValueError("FlowConfig: residual_grad applies to objective 'flow' (the energy objective keeps every "
                             "gradient); leave it at 1")
        if self.time_dist not in ("uniform", "logit_normal"):
            raise ValueError(f"FlowConfig: time_dist must be 'uniform' or 'logit_normal', got {self.time_dist!r}")
        check_solver(self.solver, "FlowConfig: solver")
        if self.solver == "heun" and not self.has_mean_head:
            raise ValueError("FlowConfig: solver 'heun' needs a flow stage with a mean head (mean_weight > 0): it "
                             "corrects the mean path")
        if not 0 <= self.one_step_prob <= 1:
            raise ValueError(f"FlowConfig: one_step_prob must be in [0, 1], got {self.one_step_prob}")
        if not self.energy_head and (self.objective == "energy" or self.mean_weight <= 0 or self.residual_blocks):
            raise ValueError("FlowConfig: energy_head False (a plain flow stage) needs objective 'flow' or 'meanflow', "
                             "mean_weight > 0 and residual_blocks 0")
        if self.objective == "distance" and (self.energy_head or self.mean_weight <= 0 or self.solver != "euler"):
            raise ValueError("FlowConfig: objective 'distance' is a plain one-pass stage: it needs energy_head False, "
                             "mean_weight > 0 and solver 'euler'")
        if self.objective == "meanflow" and (self.energy_head or self.solver != "euler"):
            raise ValueError("FlowConfig: objective 'meanflow' is a plain stage stepping with its average velocity: it "
                             "needs energy_head False and solver 'euler'")
        if not 0 <= self.meanflow_ratio <= 1:
            raise ValueError(f"FlowConfig: meanflow_ratio must be in [0, 1], got {self.meanflow_ratio}")
        check_real(self.loss_power, "FlowConfig.loss_power", minimum=0.0)
        check_real(self.time_mean, "FlowConfig.time_mean", minimum=-math.inf)
        check_real(self.time_shift, "FlowConfig.time_shift", minimum=0.0, inclusive=False)
        # stored as the float check_real returns: --set ...time_scale=1 and 1.0 are one model (and one pairs cache)
        self.time_scale = check_real(self.time_scale, "FlowConfig.time_scale", minimum=0.0, inclusive=False)
        check_real(self.coarse_lead, "FlowConfig.coarse_lead", minimum=1.0)
        if self.coarse_lead != 1 and (self.energy_head or self.objective != "flow"):
            raise ValueError("FlowConfig: coarse_lead != 1 needs a plain flow stage (energy_head False, objective 'flow')")
        if self.pos_embed not in POS_EMBEDS:
            raise ValueError(f"FlowConfig: pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")

    def sampling_solver(self, steps: int, temperature: float = 0.0, solver: str | None = None) -> str:
        """The solver `steps` steps at `temperature` take (`solver`, else the config's), with one-line errors for what
        the stage cannot sample: too many steps, a temperature without an energy head, Heun without a mean head, and
        an explicit Heun where every step draws x0 from the energy head (temperature > 0: DDIM steps, which Heun's
        correction of the mean path would not change)."""
        if not 1 <= steps <= self.max_steps:
            raise ValueError(f"steps must be in [1, {self.max_steps}] (the config's max_steps), got {steps}")
        if self.objective == "distance" and steps != 1:
            raise ValueError(f"steps {steps}: a stage trained by the energy distance (objective 'distance') is a "
                             "one-pass generator; use 1 step")
        if temperature > 0 and not self.energy_head:
            raise ValueError(f"temperature {temperature:g}: this stage has no energy head (energy_head False) and samples "
                             "its flow's mean path only; use temperature 0")
        if solver is None:
            return "euler" if temperature > 0 else self.solver
        if check_solver(solver) == "heun" and self.objective == "meanflow":
            raise ValueError("solver 'heun': a MeanFlow stage steps with its average velocity over each step (solver "
                             "'euler')")
        if solver == "heun" and not self.has_mean_head:
            raise ValueError("solver 'heun' needs a flow stage with a mean head (mean_weight > 0 or objective 'energy')")
        if solver == "heun" and temperature > 0:
            raise ValueError(f"solver 'heun' at temperature {temperature:g}: every step draws x0 from the energy head and "
                             "takes a DDIM step, which Heun does not change; use temperature 0 (the mean path) or 'euler'")
        return solver

    @property
    def has_mean_head(self) -> bool:
        """A mean head: trained by its MSE (mean_weight > 0) or by the energy objective."""
        return self.mean_weight > 0 or self.objective == "energy"
