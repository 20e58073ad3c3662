"""`longvideo bench vae`: encode + decode N frames, streamed (constant memory) or whole; time and memory.

Frames come from the shapes world rendered chunk by chunk, and decoded frames are dropped as they come,
so in streaming mode nothing grows with N but the latents (N/4 x C x H/8 x W/8 floats).
"""

from __future__ import annotations

import resource
import time

import torch

from longvideo import limits
from longvideo.data.shapes import ShapesConfig, sample_video, video_rng
from longvideo.errors import UserError
from longvideo.models.vae.layers import StreamState
from longvideo.models.vae.model import CausalVAE


@torch.no_grad()
def bench_vae(
    vae: CausalVAE,
    frames: int,
    height: int,
    width: int,
    stream: bool = True,
    latent_chunk: int = 4,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict:
    f, s = vae.cfg.temporal_factor, vae.cfg.spatial_factor
    if frames < 1 or (frames - 1) % f:
        raise UserError(f"--frames must be 1 + a multiple of {f} (e.g. 33, 65, 1025), got {frames}")
    if height % s or width % s or height < 48 or width < 48:
        raise UserError(f"--height/--width must be multiples of {s} and >= 48, got {height}x{width}")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: torch sees no CUDA device here")
    if stream and latent_chunk < 1:
        raise UserError(f"a streamed bench needs latent_chunk >= 1, got {latent_chunk}")
    clip_frames = min(frames, 1 + latent_chunk * f) if stream else frames  # the largest chunk at once
    what = f"bench vae on {clip_frames} frames of {height}x{width} at once"
    mend = "use a smaller --height/--width" + (" or --chunk" if stream else ", or stream with --chunk K")
    limits.check_fits(limits.vae_bytes(vae.cfg, clip_frames, height, width, dtype.itemsize), what, dev, mend)
    pixels = clip_frames * height * width * 3 * 9  # the uint8 render and two float copies, on the CPU
    limits.check_fits(pixels, what, "cpu", mend)
    video = sample_video(ShapesConfig(height=height, width=width), video_rng(0, 0))
    vae = vae.to(device=device, dtype=dtype)

    def clip(start: int, n: int) -> torch.Tensor:
        return video.render_tensor(n, start)[None].to(device=device, dtype=dtype)

    t0 = time.perf_counter()
    out_frames = 0
    if stream:
        enc, dec = StreamState(), StreamState()
        step = latent_chunk * f
        start, n = 0, 1 + step
        while start < frames:
            n = min(n, frames - start)
            post, enc = vae.encode_chunk(clip(start, n), enc)
            y, dec = vae.decode_chunk(post.mean, dec)
            out_frames += y.shape[2]
            start, n = start + n, step
    else:
        out_frames = vae.decode(vae.encode(clip(0, frames)).mean).shape[2]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    assert out_frames == frames, (out_frames, frames)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    out = {
        "frames": frames,
        "height": height,
        "width": width,
        "stream": stream,
        "seconds": round(sec, 3),
        "frames_per_s": round(frames / sec, 2),
        "peak_rss_mib": round(peak, 1),
    }
    if device.startswith("cuda"):
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out
