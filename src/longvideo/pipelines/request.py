"""`GenerationRequest`: every option of one generation, as data. The CLI builds one from its arguments, the
web UI from its form, a script directly; `VideoPipeline.__call__` and `generate_to_file` take it.

    req = GenerationRequest("a small blue square staying still on a white background", frames=65, seed=3)
    video = pipe(req)                      # the same as pipe("a small blue ...", frames=65, seed=3)
    pipe.generate_to_file("out.mp4", dataclasses.replace(req, seed=4))

An option left at None takes the pipeline's `defaults` (PipelineDefaults). `resolve` checks a request
against one pipeline (its defaults, frame rule, sizes, conditioning channels) and puts it into the model's
terms: a `ResolvedRequest`, what the one code path of video.py runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from longvideo import limits
from longvideo.diffusion import get_sampler
from longvideo.errors import UserError
from longvideo.pipelines.inputs import (
    check_size,
    decoder_streams,
    fit,
    fit_video,
    generated_frames,
    image_to_tensor,
    video_to_tensor,
)
from longvideo.pipelines.windows import WindowPlan

if TYPE_CHECKING:
    from longvideo.pipelines.video import VideoPipeline


@dataclass(frozen=True)
class GenerationRequest:
    """One video to generate. None = the pipeline's default (`defaults` of the same name).

    image (I2V): the first frame, uint8 (H, W, 3) numpy, a PIL image, or a float tensor (3, H, W) in [-1, 1];
    scaled to cover (height, width) and centre-cropped. known (continuation): a clip (1, 3, T0, H, W) in
    [-1, 1], T0 = 4k+1 <= frames and <= the window, that the video continues from. Both need a transformer
    with conditioning channels; in a video of several windows they are known to the first one.
    """

    prompt: str
    negative_prompt: str | None = None  # the other side of classifier-free guidance
    image: Any = None
    known: Tensor | None = None
    frames: int | None = None  # >= 1; not 4k+1: rounded UP to the next 4k+1, generated, cut back
    height: int | None = None  # a multiple of the VAE's spatial factor x the patch size (16 for the presets)
    width: int | None = None
    steps: int | None = None  # sampler steps per window
    guidance: float | None = None  # classifier-free guidance scale >= 1; 1 = off; > 1: one batched call
    seed: int = 0  # the same seed gives the same video (a private CPU torch.Generator)
    sampler: str | None = None  # a name in diffusion.SAMPLERS
    # More frames than the window are generated window after window (windows.py), each later window
    # continuing from the last `overlap` latent frames (1 latent frame = 4 video frames) of the one before.
    window: int | None = None  # frames at once, rounded like `frames`; None: defaults.window or .frames
    overlap: int | None = None  # None: 2, less where the window is shorter
    anchor: bool = False  # against drift: every later window also knows the video's first latent frame
    cond_noise: float = 0.0  # against drift: noise the known frames to this diffusion time in [0, 1); 0 = off

    @classmethod
    def from_options(cls, prompt: Any, **options: Any) -> GenerationRequest:
        """`GenerationRequest(prompt, **options)`, but an option that is not a field is a UserError."""
        names = [f.name for f in dataclasses.fields(cls) if f.name != "prompt"]
        unknown = [k for k in options if k not in names]
        if unknown:
            raise UserError(
                f"unknown generation option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                f"(options: {', '.join(names)})"
            )
        return cls(prompt, **options)

    def resolve(self, pipe: VideoPipeline) -> ResolvedRequest:
        """This request checked against `pipe` and filled in from its defaults (UserError: it cannot run)."""
        d, f, tp = pipe.defaults, pipe.temporal_factor, pipe.transformer.cfg.patch_size[0]
        prompt, image, known = self.prompt, self.image, self.known
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("the prompt is empty: describe the video to generate")
        negative_prompt = d.negative_prompt if self.negative_prompt is None else self.negative_prompt
        if not isinstance(negative_prompt, str):
            raise UserError(f"negative_prompt must be a string, got {type(negative_prompt).__name__}")
        if image is not None and known is not None:
            raise UserError("give an image (image-to-video) or a clip to continue (known), not both")
        cond_channels = pipe.transformer.cfg.cond_channels
        if (image is not None or known is not None) and not cond_channels:
            raise UserError(
                "this model has no conditioning channels: it cannot start from an image or a clip"
            )
        frames = d.frames if self.frames is None else self.frames
        generated = generated_frames(frames, f, tp)
        limits.check_count("frames", frames, 1, limits.MAX_FRAMES, "one command's video: make it in parts")
        window = (d.window or d.frames) if self.window is None else self.window
        window_frames = generated_frames(window, f, tp, what="window")
        latent, latent_window = (generated - 1) // f + 1, (window_frames - 1) // f + 1
        plan = WindowPlan.make(latent, latent_window, self.overlap, self.anchor, self.cond_noise)
        if plan.num_windows > 1 and plan.carried and not cond_channels:
            raise UserError(
                f"this model has no conditioning channels: it cannot continue a window, so it makes at most "
                f"{window_frames} frames: ask for a longer window, or for independent windows (overlap 0, "
                "no anchor)"
            )
        mh, mw = pipe.size_multiples
        why = f"VAE {pipe.vae.cfg.spatial_factor}x down-sampling x patch size"
        height = check_size("height", d.height if self.height is None else self.height, mh, why)
        width = check_size("width", d.width if self.width is None else self.width, mw, why)
        steps = d.steps if self.steps is None else self.steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f"steps must be an integer >= 1, got {steps!r}")
        limits.check_count("steps", steps, 1, limits.MAX_STEPS, "samplers converge in tens of steps")
        guidance = limits.check_finite("guidance", d.guidance if self.guidance is None else self.guidance)
        if not guidance >= 1.0:
            raise UserError(f"guidance must be >= 1 (1 turns classifier-free guidance off), got {guidance}")
        seed = self.seed
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= limits.MAX_SEED:
            raise UserError(f"seed must be an integer in 0..2**64-1, got {seed!r}")
        sampler = d.sampler if self.sampler is None else self.sampler
        get_sampler(sampler)
        _check_memory(pipe, plan, height, width, guidance, generated)
        pixels = None
        if image is not None:
            pixels = fit(image_to_tensor(image), height, width)[:, :, None]  # (1, 3, 1, H, W)
        elif known is not None:
            pixels = fit_video(video_to_tensor(known), height, width)
            t0 = pixels.shape[2]
            if (t0 - 1) % f:
                raise UserError(f"known: a clip to continue needs 1 + a multiple of {f} frames, got {t0}")
            if t0 > frames:
                raise UserError(
                    f"known: the clip ({t0} frames) is longer than the video to generate ({frames})"
                )
            if t0 > window_frames:
                raise UserError(
                    f"known: the clip ({t0} frames) is longer than the window ({window_frames} frames)"
                )
        return ResolvedRequest(prompt, negative_prompt, int(frames), generated, height, width, steps,
                               guidance, int(seed), sampler, pixels, plan)  # fmt: skip


@dataclass(frozen=True)
class ResolvedRequest:
    """One request, resolved against a pipeline's defaults and checked: what the sampler loop runs."""

    prompt: str
    negative_prompt: str
    frames: int  # returned / written
    generated: int  # f*k+1 >= frames
    height: int
    width: int
    steps: int
    guidance: float
    seed: int
    sampler: str
    known: Tensor | None  # (1, 3, T0, H, W) pixels of the known first frames; None for T2V
    plan: WindowPlan  # latent frames: the whole video, per window, carried from window to window


def _check_memory(pipe: VideoPipeline, plan: WindowPlan, height: int, width: int, guidance: float,
                  generated: int) -> None:  # fmt: skip
    """Refuse a request whose one window (or whole video, for a VAE that cannot decode as a stream) cannot
    fit the pipeline's device (limits.py: the estimate)."""
    vcfg = pipe.vae.cfg
    streams = decoder_streams(vcfg)
    decode_frames = 4 * vcfg.temporal_factor if streams else generated  # decode_chunk 4 latent frames
    window = min(plan.window, plan.total)
    dit_dtype = next(pipe.transformer.parameters()).dtype
    vae_dtype = next(pipe.vae.parameters()).dtype
    need = limits.generation_bytes(pipe.transformer.cfg, vcfg, window, height, width, guidance,
                                   dit_dtype.itemsize, vae_dtype.itemsize, decode_frames)  # fmt: skip
    what = f"a {height}x{width} window of {(window - 1) * vcfg.temporal_factor + 1} frames"
    mend = "ask for a smaller height/width or window"
    if not streams:
        what = f"a {height}x{width} video of {generated} frames (this VAE decodes the whole video at once)"
        mend = "ask for fewer frames or a smaller height/width"
    limits.check_fits(need, what, pipe.device, mend)


def as_request(request: GenerationRequest | str, options: dict[str, Any]) -> GenerationRequest:
    """What `pipe(request)` and `pipe("prompt", **options)` mean: a GenerationRequest, or one built from a
    prompt and keyword options (a request and options together are refused: say it once)."""
    if not isinstance(request, GenerationRequest):
        return GenerationRequest.from_options(request, **options)
    if options:
        raise UserError(
            f"got a GenerationRequest and the options {', '.join(options)}: put them in the request "
            "(dataclasses.replace)"
        )
    return request


__all__ = ["GenerationRequest", "ResolvedRequest", "as_request"]
