"""README's training example, configs/quickstart_dit.yaml, run through `longvideo train` (as a user runs
it, in a fresh process) with overrides small enough for CI, and its export loaded back."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longvideo.pipelines import VideoPipeline

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart_dit.yaml"


@pytest.mark.slow
def test_quickstart_trains_and_exports_a_loadable_pipeline(tmp_path):
    out, export = tmp_path / "run", tmp_path / "export"
    overrides = [
        "steps=2",
        "warmup=1",
        "batch_size=2",
        "data.num_videos=4",
        "threads=1",
        f"out={out}",
        f"data.cache={tmp_path / 'latents'}",
        f"export={export}",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "longvideo", "train", str(CONFIG), *overrides],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # nothing in the config may depend on the checkout as working directory
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["steps"] == 2

    pipe = VideoPipeline.from_pretrained(export)
    bundled = VideoPipeline.from_pretrained("shapes")
    # trained on the bundled model's frozen VAE and text encoder, which the export carries unchanged
    for got, want in [(pipe.vae, bundled.vae), (pipe.text_encoder.model, bundled.text_encoder.model)]:
        got, want = got.state_dict(), want.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    assert pipe.vae.cfg == bundled.vae.cfg
    assert pipe.transformer.cfg.num_layers == 4 and pipe.transformer.cfg.text_dim == 64
