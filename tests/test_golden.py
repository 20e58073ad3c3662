"""Golden numbers: a refactor that changes what the trainers compute or what the bundled model draws fails
here, loudly. The pins were taken on the code as it stood; update one only on purpose, and say why in the
commit (e.g. a deliberate change of the random stream).

- the tiny DiT trainer's first losses, with every per-sample draw in play (tasks, caption drop, noised
  known frames, salient weights), and the tiny VAE trainer's (image and video batches);
- the bundled model's uint8 frames at a fixed seed: a text-to-video clip, and an image-to-video clip made
  in three windows (the long-video path). The frames are stored in tests/data/golden_videos.npz, whose
  SHA-256 is pinned here; a run must give them exactly, or within float noise of another CPU or thread
  count (measured: 2 threads instead of 1 flip 0.008% of the values by 1 level). Any real change of the
  computation (another noise draw, another conditioning) moves far more.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from longvideo.models.vae.io import save_vae
from longvideo.models.vae.model import CausalVAE, vae_preset
from longvideo.train.dit import DiTTrainConfig, DiTTrainer
from longvideo.train.vae import VAETrainConfig, VAETrainer

pytestmark = pytest.mark.usefixtures("one_thread")

# losses at steps 1..6 (code of 7ef8315)
DIT_LOSSES = [1.07039675116539, 1.1107338964939117, 1.0320520251989365, 1.1188511550426483,
              1.0369625091552734, 1.0614296793937683]  # fmt: skip
VAE_LOSSES = [0.5336052179336548, 0.803482174873352, 0.9759886860847473, 0.4506235122680664]
T2V_SHA = "a2dc59e298f9fdbe0c01c21006e4bc54e52435ba015ceb72f156bccdf4314748"
I2V_LONG_SHA = "c56a05a64c1b64a12aa7878504d3499fa6c487ebf40e2da54d7f1ce04fcbedd2"


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


def golden_dit_config(out: Path, vae: str) -> DiTTrainConfig:
    cfg = DiTTrainConfig(out=str(out), vae=vae, text_encoder="new:shapes", text_max_length=24)
    cfg.model.num_layers, cfg.model.num_heads, cfg.model.head_dim, cfg.model.text_dim = 2, 2, 12, 16
    cfg.model.cond_channels = 5  # [4 latent channels | mask]
    d = cfg.data
    d.num_videos, d.shapes.height, d.shapes.width, d.shapes.num_frames = 12, 48, 48, 9
    cfg.steps, cfg.batch_size, cfg.warmup, cfg.log_every, cfg.save_every = 6, 4, 2, 1, 100
    cfg.p_image_cond, cfg.p_continue, cfg.text_drop, cfg.cond_noise = 0.3, 0.4, 0.3, 0.2
    cfg.salient_boost, cfg.device = 2.0, "cpu"
    return cfg


def test_golden_dit_losses(tmp_path):
    torch.manual_seed(0)
    save_vae(CausalVAE(vae_preset("tiny")), tmp_path / "vae")
    DiTTrainer(golden_dit_config(tmp_path / "run", str(tmp_path / "vae"))).fit(progress=False)
    assert _losses(tmp_path / "run") == pytest.approx(DIT_LOSSES, rel=1e-5)


def test_golden_vae_losses(tmp_path):
    cfg = VAETrainConfig(out=str(tmp_path / "run"), steps=4, batch_size=2, image_batch_size=2, image_every=2,
                         video_frames=5, warmup=1, log_every=1, save_every=100)  # fmt: skip
    cfg.model = vae_preset("tiny")
    cfg.data.height = cfg.data.width = 48
    VAETrainer(cfg).fit(progress=False)
    assert _losses(tmp_path / "run") == pytest.approx(VAE_LOSSES, rel=1e-5)


GOLDEN = Path(__file__).parent / "data" / "golden_videos.npz"


def _check_frames(video: torch.Tensor, name: str, sha: str) -> None:
    """Exactly the pinned frames, or within float noise: <= 0.1% of the values off, by <= 2 levels."""
    from longvideo.data.video_io import to_uint8_frames

    ref = np.load(GOLDEN)[name]
    assert hashlib.sha256(ref.tobytes()).hexdigest() == sha, "tests/data/golden_videos.npz changed"
    got = to_uint8_frames(video)
    assert got.shape == ref.shape
    if hashlib.sha256(got.tobytes()).hexdigest() == sha:
        return
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    frac = float((diff > 0).mean())
    assert frac <= 1e-3 and diff.max() <= 2, f"{name}: {frac:.2%} of the values differ, by up to {diff.max()}"


@pytest.fixture(scope="module")
def bundled():
    from longvideo.pipelines.video import VideoPipeline

    return VideoPipeline.from_pretrained("shapes")


def test_golden_bundled_video(bundled):
    video = bundled("a large red circle moving right quickly on a black background", frames=9, steps=6,
                    seed=3, progress=False)  # fmt: skip
    assert video.shape == (1, 3, 9, 64, 64)
    _check_frames(video, "t2v", T2V_SHA)


def test_golden_bundled_long_video(bundled):
    """Image-to-video in windows of 9 frames (3 latent frames), one carried, the anchor on: 17 frames."""
    image = torch.zeros(3, 64, 64) - 1
    image[0, 20:40, 10:30] = 0.8  # a red square on black
    video = bundled("a large red square moving right slowly on a black background", image=image, frames=17,
                    window=9, overlap=1, anchor=True, steps=4, seed=5, progress=False)  # fmt: skip
    assert video.shape == (1, 3, 17, 64, 64)
    _check_frames(video, "i2v_long", I2V_LONG_SHA)
