"""Videos longer than the model's window, at constant memory: the window plan of `VideoPipeline`.

A DiT is trained on clips of one length, its window (the pipeline's `defaults.frames`, e.g. 33 frames = 9
latent frames). A longer request is generated window after window. Each later window is an ordinary
continuation request of the one code path (inputs.py): its first latent frames are *known*, given through
the DiT's `cond` channels [latents | mask], and only the frames after them are new:

    window 0:  [ x0 x1 x2 x3 x4 x5 x6 x7 x8 ]                      all 9 kept (T2V, I2V or continuation)
    window 1:  [ x7 x8 | y0 y1 y2 y3 y4 y5 y6 ]                    overlap 2: x7 x8 known, y0..y6 new
    window 2:  [ y5 y6 | z0 ... ]                                   and so on; the last window is shorter
    anchor:    [ x0 | y5 y6 | z0 ... ]                              + the video's first latent frame

Continuity lives in latent space: the known frames are the previous window's sampled latents themselves,
not a re-encoding of its decoded pixels. Re-encoding would cost a VAE encode per window and add the VAE's
reconstruction error to every hand-over (it compounds over windows); the latents are what the decoder
turns into the frames already written, and the causal decoder's stream state continues across the
boundary, so the video has no seam from decoding. One wrinkle: a causal VAE's first latent frame stands
for one video frame, later ones for four, so a carried frame lands in slot 0, which in training always
held a one-frame latent; models that the long-video driver matters for should be trained on continuation
from clips cut at any latent frame.

Against drift (colour and brightness creep, blur: errors of each window compound into the next), two
options, both off by default:

- `cond_noise` (noise augmentation, SVD's `noise_aug_strength`, SkyReels-V2's `addnoise_condition`): every
  known latent frame is moved to diffusion time t = cond_noise along the schedule's forward process before
  it conditions a window (flow: (1 - t) z + t eps). The model then treats known frames as a hint rather
  than the truth, so small artefacts of the last window are not copied forward. Only as much as the model
  was trained for (the DiT trainer's own `cond_noise`; the bundled model was trained on clean known
  frames): the noise level is not given to the DiT.
- `anchor`: every later window also knows the video's first latent frame, at position 0, with the overlap
  frames after it. Colours and background stay tied to the start instead of to the last window (the
  frame sink of LongLive). The jump from position 0 to position 1 is not something a model trained on
  contiguous clips has seen; it costs one latent frame of each window.

All counts here are latent frames. Nothing here grows with the video: a window of latents and the frames
it hands over are all that is held.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from longvideo.diffusion import NoiseSchedule, add_noise
from longvideo.errors import UserError

DEFAULT_OVERLAP = 2  # latent frames (8 video frames): enough to carry position and velocity over


@dataclass(frozen=True)
class WindowPlan:
    """How a video of `total` latent frames is cut into windows of at most `window` latent frames."""

    total: int  # latent frames of the whole video
    window: int  # latent frames sampled at once (the model's context)
    overlap: int  # latent frames of the previous window each later window starts from
    anchor: bool = False  # each later window also knows the first window's first latent frame
    cond_noise: float = 0.0  # diffusion time of the noise put on every known latent frame; 0 = none

    @classmethod
    def make(
        cls,
        total: int,
        window: int,
        overlap: int | None = None,
        anchor: bool = False,
        cond_noise: float = 0.0,
    ) -> WindowPlan:
        """Checked plan; `overlap=None` takes DEFAULT_OVERLAP, or less where the window is too short."""
        if not isinstance(anchor, bool):
            raise UserError(f"anchor must be True or False, got {anchor!r}")
        if overlap is None:
            overlap = max(0, min(DEFAULT_OVERLAP, window - 1 - int(anchor)))
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise UserError(f"overlap must be an integer >= 0 (latent frames), got {overlap!r}")
        if overlap + anchor >= window:
            carried = f"overlap {overlap}" + (" + the anchor frame" if anchor else "")
            raise UserError(
                f"{carried} must be less than the window's {window} latent frames, so that every window adds "
                "new frames: use a smaller overlap or a larger window"
            )
        if isinstance(cond_noise, bool) or not isinstance(cond_noise, (int, float)):
            raise UserError(f"cond_noise must be a number in [0, 1), got {cond_noise!r}")
        if not 0.0 <= cond_noise < 1.0:
            raise UserError(f"cond_noise must be in [0, 1) (a diffusion time; 0 = off), got {cond_noise}")
        return cls(int(total), int(window), int(overlap), anchor, float(cond_noise))

    @property
    def carried(self) -> int:
        """Known latent frames at the start of every later window."""
        return self.overlap + int(self.anchor)

    @property
    def num_windows(self) -> int:
        if self.total <= self.window:
            return 1
        return 1 + math.ceil((self.total - self.window) / (self.window - self.carried))

    def windows(self, temporal_patch: int = 1) -> Iterator[tuple[int, int, int]]:
        """(sampled, skip, keep) per window: sample `sampled` latent frames, keep `keep` of them from
        position `skip` on. The first window keeps everything it samples (its known frames, from an image
        or a clip, are part of the video); later ones skip the frames they were given. The last window is
        only as long as needed (rounded up to the DiT's temporal patch; the surplus is dropped)."""
        sampled = min(self.window, self.total)
        yield sampled, 0, sampled
        left = self.total - sampled
        while left > 0:
            need = self.carried + left
            sampled = min(self.window, -(-need // temporal_patch) * temporal_patch)
            keep = min(sampled - self.carried, left)
            yield sampled, self.carried, keep
            left -= keep


def carry(x: Tensor, first: Tensor | None, overlap: int) -> Tensor | None:
    """The known latent frames of the next window: [first frame (the anchor) |] the last `overlap`
    frames of this window's latents x (1, C, K, h, w) -> (1, C, carried, h, w); None if nothing carries."""
    parts = [] if first is None else [first]
    if overlap:
        parts.append(x[:, :, x.shape[2] - overlap :])
    return torch.cat(parts, dim=2) if parts else None


def noise_known(known: Tensor, t: float, schedule: NoiseSchedule, generator: torch.Generator) -> Tensor:
    """Known latents (1, C, K0, h, w) moved to diffusion time t: alpha_t z + sigma_t eps, eps drawn from
    `generator` on the CPU (the same video on every device)."""
    eps = torch.randn(known.shape, generator=generator).to(known)
    return add_noise(known, eps, t, schedule)


def rechunk(parts: Iterable[Tensor], chunk: int) -> Iterator[Tensor]:
    """Latents arriving in pieces of any length (1, C, n, h, w) -> pieces of exactly `chunk` frames (the
    last may be shorter): the decoder then works at one size whatever the windows' sizes are. Holds less
    than one chunk."""
    buf: list[Tensor] = []
    held = 0
    for z in parts:
        while z.shape[2]:
            take = min(chunk - held, z.shape[2])
            buf.append(z[:, :, :take])
            held, z = held + take, z[:, :, take:]
            if held == chunk:
                yield buf[0] if len(buf) == 1 else torch.cat(buf, dim=2)
                buf, held = [], 0
    if buf:
        yield buf[0] if len(buf) == 1 else torch.cat(buf, dim=2)


__all__ = ["DEFAULT_OVERLAP", "WindowPlan", "carry", "noise_known", "rechunk"]
