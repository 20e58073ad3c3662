"""`VideoPipeline`: text -> video, image -> video and video continuation through ONE code path.

    pipe = VideoPipeline.from_pretrained("shapes")              # or a pipeline folder (folder.py)
    video = pipe("a large red circle moving right quickly on a black background", seed=1)  # (1, 3, T, H, W)
    pipe.generate_to_file("out.mp4", "a small blue square staying still on a white background")
    pipe.generate_to_file("long.mp4", "a small blue square bouncing around on a navy background",
                          frames=1025, anchor=True)  # window after window, at constant memory
    pipe(GenerationRequest("a large red circle ...", frames=65, seed=1))  # the options as data (request.py)

The three tasks differ only in which latent frames are known (inputs.py): none (T2V), frame 0 (I2V: the
image encoded as a one-frame video), or the first ones (continuation: a clip's latents). The DiT sees them
through its `cond` channels [masked-video latents | mask]; the noisy sample itself is never overwritten.
Known frames condition only through `cond`, as in the inpainting DiTs this follows (EasyAnimate, OSP v1.3):
re-imposing them on x would put x off the noise path the model was trained on.

A request longer than the window (`defaults.frames`, or `window=`) is generated window after window, each
later window a continuation of the last latent frames of the one before (windows.py); `generate_to_file`
decodes the latents as they come through the VAE's stream and writes the frames at once, so memory stays
constant in the video's length.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from longvideo.data.video_io import VideoWriter, to_uint8_frames
from longvideo.diffusion import (
    DiffusionConfig,
    NoiseSchedule,
    cfg_denoiser,
    get_sampler,
    make_denoiser,
    sampling_times,
)
from longvideo.errors import UserError
from longvideo.models.dit import VideoDiT
from longvideo.models.text import TextEncoder
from longvideo.models.vae.model import CausalVAE
from longvideo.pipelines import folder as fs
from longvideo.pipelines.inputs import build_cond, decoder_streams, scale_latents, unscale_latents
from longvideo.pipelines.request import GenerationRequest, ResolvedRequest, as_request
from longvideo.pipelines.windows import carry, noise_known, rechunk

# (step, t, x, x0_hat) after each sampler step; in a video of several windows, step restarts at 0 per window
Callback = Callable[[int, float, Tensor, Tensor], None]


@dataclass
class PipelineDefaults:
    """What a call leaves out; stored in `scheduler/config.json` next to the DiffusionConfig."""

    frames: int = 33
    height: int = 64
    width: int = 64
    steps: int = 25
    guidance: float = 4.0  # classifier-free guidance scale; 1 turns it off
    sampler: str = "dpmpp_2m"  # diffusion.SAMPLERS
    negative_prompt: str = ""
    fps: float = 8.0
    window: int = 0  # frames one window generates at once (a post-tuned model's longer window); 0 = frames

    def validate(self) -> PipelineDefaults:
        get_sampler(self.sampler)
        if self.frames < 1 or self.height < 1 or self.width < 1 or self.steps < 1:
            raise UserError("defaults: frames, height, width and steps must be >= 1")
        if self.window < 0:
            raise UserError(f"defaults: window must be >= 0 (0 = frames), got {self.window}")
        if self.guidance < 1 or self.fps <= 0:
            raise UserError("defaults: guidance must be >= 1 and fps > 0")
        return self


class VideoPipeline:
    def __init__(
        self,
        vae: CausalVAE,
        transformer: VideoDiT,
        text_encoder: TextEncoder,
        diffusion: DiffusionConfig | None = None,
        defaults: PipelineDefaults | None = None,
    ):
        self.vae = vae.eval()
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.diffusion = (diffusion if diffusion is not None else DiffusionConfig()).validate()
        self.defaults = (defaults if defaults is not None else PipelineDefaults()).validate()
        self.schedule = NoiseSchedule(self.diffusion)
        c, dc = vae.cfg.latent_channels, transformer.cfg
        if dc.in_channels != c:
            raise UserError(f"the transformer takes {dc.in_channels} latent channels, the VAE makes {c}")
        if dc.cond_channels not in (0, c + 1):
            raise UserError(
                f"transformer cond_channels must be 0 or {c + 1} ([latents | mask]), got {dc.cond_channels}"
            )
        if dc.pooled_dim:
            raise UserError(
                "transformers with a pooled text input (pooled_dim > 0) are not supported by this pipeline"
            )
        if text_encoder.cfg.output != "last_hidden_state" or text_encoder.dim != dc.text_dim:
            raise UserError(
                f"the text encoder gives {text_encoder.dim}-d states, the transformer wants {dc.text_dim}"
            )

    # ------------------------------------------------------------------------- properties

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def temporal_factor(self) -> int:
        return self.vae.cfg.temporal_factor

    @property
    def size_multiples(self) -> tuple[int, int]:
        """(height, width) must be multiples of these: VAE spatial factor x the DiT's patch size."""
        s, (_, ph, pw) = self.vae.cfg.spatial_factor, self.transformer.cfg.patch_size
        return s * ph, s * pw

    def to(self, device: str | torch.device) -> VideoPipeline:
        self.vae.to(device)
        self.transformer.to(device)
        self.text_encoder.to(device)
        return self

    # ------------------------------------------------------------------------- folders

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> VideoPipeline:
        """A pipeline folder (folder.py) or a bundled model name (`shapes`); `dtype` for VAE + DiT."""
        vae, transformer, text_encoder, sched, where = fs.load_parts(path_or_name, cls.__name__, dtype)
        diffusion = fs.from_dict(DiffusionConfig, sched.get("diffusion", {}), where)
        defaults = fs.from_dict(PipelineDefaults, sched.get("defaults", {}), where)
        pipe = cls(vae, transformer, text_encoder, diffusion, defaults)
        return pipe if device is None else pipe.to(device)

    def save_pretrained(self, folder: str | os.PathLike[str]) -> str:
        """Write the pipeline folder: into a temporary folder first, moved into place when complete."""
        sched = {
            "diffusion": dataclasses.asdict(self.diffusion),
            "defaults": dataclasses.asdict(self.defaults),
        }
        fs.save_parts(folder, type(self).__name__, self.vae, self.transformer, self.text_encoder, sched)
        return os.fspath(folder)

    # ------------------------------------------------------------------------- generation

    @torch.no_grad()
    def __call__(
        self,
        request: GenerationRequest | str,
        /,
        *,
        progress: bool = True,
        callback: Callback | None = None,
        decode_chunk: int = 4,
        **options: Any,
    ) -> Tensor:
        """Generate one video (1, 3, frames, height, width) in [-1, 1]: `request` is a GenerationRequest
        (request.py: every option, and which take the pipeline's `defaults` when left out), or a prompt
        with the request's other fields as keywords, `pipe("a red circle ...", frames=65, seed=1)`.

        A request longer than the window is generated window after window (windows.py); this call returns
        the whole video; for long ones use `generate_to_file`, whose memory does not grow with the length.
        decode_chunk: latent frames per VAE decoder call.
        """
        req = as_request(request, options).resolve(self)
        _check_chunk(decode_chunk)
        return torch.cat(list(self._frames(req, progress, callback, decode_chunk)), dim=2)

    @torch.no_grad()
    def generate_to_file(
        self,
        path: str | os.PathLike[str],
        request: GenerationRequest | str,
        /,
        *,
        fps: float | None = None,
        quality: int = 18,
        progress: bool = True,
        callback: Callback | None = None,
        decode_chunk: int = 4,
        **options: Any,
    ) -> dict:
        """Generate as `__call__` (a GenerationRequest, or a prompt and its options as keywords) and write
        the video (mp4/mkv/mov/gif) while the VAE decodes it `decode_chunk` latent frames at a time, window
        after window: memory stays constant in the frame count (for VAEs that stream exactly, see
        inputs.decoder_streams). Returns {path, frames, height, width, fps, seed, windows, seconds}."""
        t0 = time.perf_counter()
        req = as_request(request, options).resolve(self)
        _check_chunk(decode_chunk)
        fps = self.defaults.fps if fps is None else fps
        with VideoWriter(path, fps, quality=quality) as writer:  # opened first: a bad path fails before work
            for x in self._frames(req, progress, callback, decode_chunk):
                writer.write(to_uint8_frames(x))
        seconds = time.perf_counter() - t0
        return {
            "path": os.fspath(path), "frames": writer.frames_written, "height": req.height,
            "width": req.width, "fps": float(fps), "seed": req.seed, "windows": req.plan.num_windows,
            "seconds": round(seconds, 3),
        }  # fmt: skip

    # ------------------------------------------------------------------------- the one code path

    def _model_fn(self, x: Tensor, t: Tensor, **kwargs: Tensor) -> Tensor:
        dtype = next(self.transformer.parameters()).dtype
        out = self.transformer(x.to(dtype), t, **kwargs)
        return out[:, : x.shape[1]].float()  # learn_sigma models: the variance half is unused here

    def _frames(
        self, req: ResolvedRequest, progress: bool, callback: Callback | None, chunk: int
    ) -> Iterator[Tensor]:
        """The video's frames (1, 3, t, H, W) in [-1, 1], as the decoder makes them from the windows."""
        return self._decode(self._latents(req, progress, callback), req.frames, chunk)

    def _latents(self, req: ResolvedRequest, progress: bool, callback: Callback | None) -> Iterator[Tensor]:
        """Noise -> the video's latents, un-scaled for the VAE, window after window: the first window whole,
        then each later window's new latent frames, (1, C, n, h, w) each. Holds one window at a time."""
        dev, vcfg, plan = self.device, self.vae.cfg, req.plan
        c, s = vcfg.latent_channels, vcfg.spatial_factor
        hw = (req.height // s, req.width // s)
        gen = torch.Generator().manual_seed(req.seed)  # on the CPU: the same video on every device
        known = None  # (1, C, K0, h, w) scaled like x: the latent frames the next window starts from
        if req.known is not None:  # the VAE's mean latents of the known frames
            vae_dtype = next(self.vae.parameters()).dtype
            known = scale_latents(self.vae.encode(req.known.to(dev, vae_dtype)).mode().float(), vcfg)

        cfg_on = req.guidance > 1.0
        text, mask = self.text_encoder.encode([req.prompt, req.negative_prompt] if cfg_on else [req.prompt])
        text, mask = text.to(dev), mask.to(dev)
        branches = [{"text": text[i : i + 1], "text_mask": mask[i : i + 1]} for i in range(text.shape[0])]

        n = plan.num_windows
        total = n * req.steps
        with tqdm(total=total, desc="denoising", unit="step", disable=not progress, leave=False) as bar:

            def on_step(i: int, t: float, x: Tensor, x0: Tensor) -> None:
                bar.update(1)
                if callback is not None:
                    callback(i, t, x, x0)

            first = None  # (1, C, 1, h, w): the anchor
            for w, (size, skip, keep) in enumerate(plan.windows(self.transformer.cfg.patch_size[0])):
                if n > 1:
                    bar.set_postfix_str(f"window {w + 1}/{n}")
                noise = torch.randn((1, c, size, *hw), generator=gen).to(dev)
                if known is not None and plan.cond_noise > 0:
                    known = noise_known(known, plan.cond_noise, self.schedule, gen)
                x = self._sample_window(req, noise, known, branches, gen, on_step)  # (1, C, size, h, w)
                yield unscale_latents(x[:, :, skip : skip + keep], vcfg)
                if plan.anchor and first is None:
                    first = x[:, :, :1]
                known = carry(x, first, plan.overlap)

    def _sample_window(
        self, req: ResolvedRequest, noise: Tensor, known: Tensor | None, branches: list[dict],
        gen: torch.Generator, on_step: Callback,
    ) -> Tensor:  # fmt: skip
        """One window: noise (1, C, K, h, w) -> scaled latents, the known first frames given through cond."""
        c = self.vae.cfg.latent_channels
        if self.transformer.cfg.cond_channels:
            cond = build_cond(known, noise.shape[2], c, tuple(noise.shape[3:])).to(noise.device)
            branches = [b | {"cond": cond} for b in branches]  # the same known frames on both guidance sides
        denoise = make_denoiser(self._model_fn, self.diffusion, self.schedule)
        if len(branches) == 2:
            denoise = cfg_denoiser(denoise, branches[0], branches[1], req.guidance)
        else:
            denoise = functools.partial(denoise, **branches[0])
        ts = sampling_times(self.schedule, req.steps)
        return get_sampler(req.sampler)(denoise, noise, ts, self.schedule, generator=gen, callback=on_step)

    def _decode(self, latents: Iterable[Tensor], frames: int, chunk: int) -> Iterator[Tensor]:
        """Video chunks (1, 3, t, H, W) in [-1, 1], the first `frames` frames only; the latents (pieces
        (1, C, n, h, w) of one video) go through the VAE's `decode_stream` `chunk` latent frames at a time
        when it decodes exactly that way, else they are joined and decoded at once."""
        dtype = next(self.vae.parameters()).dtype
        pieces = (z.to(dtype) for z in latents)
        if decoder_streams(self.vae.cfg):
            chunks = self.vae.decode_stream(rechunk(pieces, chunk))
        else:
            chunks = iter([self.vae.decode(torch.cat(list(pieces), dim=2))])
        left = frames
        for x in chunks:
            x = x[:, :, :left]
            left -= x.shape[2]
            yield x.float().clamp(-1.0, 1.0)
            if left <= 0:
                return  # chunks holding only the rounded-up tail are never decoded


def _check_chunk(decode_chunk: Any) -> None:
    if isinstance(decode_chunk, bool) or not isinstance(decode_chunk, int) or decode_chunk < 1:
        raise UserError(f"decode_chunk must be an integer >= 1, got {decode_chunk!r}")


__all__ = ["PipelineDefaults", "VideoPipeline"]
