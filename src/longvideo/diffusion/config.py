"""`DiffusionConfig`: the noise process and the training objective of a diffusion model, as data.

Presets of the seed systems:

    PixArt / OSP v1.2 (eps, DDPM betas, min-SNR 5):
        DiffusionConfig(objective="eps", schedule="linear", min_snr_gamma=5.0)
    OSP v1.3 (v, zero terminal SNR):
        DiffusionConfig(objective="v", schedule="linear", zero_terminal_snr=True)
    SD3 / Vchitect-2.0 (rectified flow, logit-normal times, shift 3):
        DiffusionConfig(objective="flow", schedule="flow", flow_shift=3.0, timestep_sampling="logit_normal")
"""

from __future__ import annotations

from dataclasses import dataclass

from longvideo.errors import UserError

OBJECTIVES = ("eps", "v", "flow")
SCHEDULES = ("linear", "scaled_linear", "flow")
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


@dataclass
class DiffusionConfig:
    objective: str = "eps"  # what the network predicts: "eps" | "v" | "flow" (velocity eps - x0)
    schedule: str = "linear"  # "linear" | "scaled_linear" (DDPM betas, VP) | "flow" (x_t = (1-t) x0 + t eps)
    num_train_timesteps: int = 1000  # VP: the discrete grid; flow: the network sees t * this
    beta_start: float = 0.0001
    beta_end: float = 0.02
    zero_terminal_snr: bool = False  # Lin et al. 2023: rescale the VP betas so that alpha(1) = 0
    flow_shift: float = 1.0  # SD3: t' = shift t / (1 + (shift - 1) t), on training and sampling times
    timestep_sampling: str = "uniform"  # training times: "uniform" | "logit_normal" (SD3)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    min_snr_gamma: float | None = None  # Hang et al. 2023 min-SNR-gamma loss weighting (5.0 in OSP)

    def validate(self) -> DiffusionConfig:
        from longvideo import limits

        try:
            limits.check_types(self)  # numbers finite: a NaN beta or shift gives a NaN schedule
        except UserError as e:
            raise UserError(f"diffusion: {e}") from None
        if self.num_train_timesteps > limits.MAX_TIMESTEPS:
            raise UserError(
                f"diffusion: num_train_timesteps must be <= {limits.MAX_TIMESTEPS:,} (the seeds use 1000), "
                f"got {self.num_train_timesteps:,}"
            )
        _one_of("objective", self.objective, OBJECTIVES)
        _one_of("schedule", self.schedule, SCHEDULES)
        _one_of("timestep_sampling", self.timestep_sampling, TIMESTEP_SAMPLING)
        if (self.objective == "flow") != (self.schedule == "flow"):
            # eps/v on the straight path (or a velocity target on a VP path) is possible, but no system we
            # follow uses it and the v-prediction formulas here assume alpha^2 + sigma^2 = 1.
            raise UserError(
                f"diffusion: objective {self.objective!r} does not go with schedule {self.schedule!r} "
                "(use objective 'flow' exactly with schedule 'flow')"
            )
        if self.num_train_timesteps < 2:
            raise UserError(f"diffusion: num_train_timesteps must be >= 2, got {self.num_train_timesteps}")
        if self.schedule != "flow" and not 0 < self.beta_start < self.beta_end < 1:
            raise UserError(
                f"diffusion: need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.zero_terminal_snr and self.schedule == "flow":
            raise UserError(
                "diffusion: zero_terminal_snr is for VP schedules; the flow path already ends at SNR 0"
            )
        if self.zero_terminal_snr and self.objective == "eps":
            raise UserError(
                "diffusion: zero_terminal_snr needs objective 'v' (eps cannot give x0 at SNR 0; Lin et al.)"
            )
        if self.flow_shift <= 0:
            raise UserError(f"diffusion: flow_shift must be > 0, got {self.flow_shift}")
        if self.flow_shift != 1.0 and self.schedule != "flow":
            raise UserError("diffusion: flow_shift only applies to schedule 'flow'")
        if self.logit_std <= 0:
            raise UserError(f"diffusion: logit_std must be > 0, got {self.logit_std}")
        if self.min_snr_gamma is not None and self.min_snr_gamma <= 0:
            raise UserError(f"diffusion: min_snr_gamma must be > 0 (or null), got {self.min_snr_gamma}")
        return self


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"diffusion: {name} must be one of {', '.join(choices)}; got {value!r}")
