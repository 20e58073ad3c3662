"""Training never loses work: non-finite steps are skipped and never checkpointed, a damaged checkpoint
falls back to an intact one, a changed model is refused in one line, one run per folder, the log is not
doubled by a resume, and checkpoints hold no pickles."""

from __future__ import annotations

import fcntl
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test_train_dit as base
from longvideo.errors import UserError
from longvideo.train.checkpoint import list_checkpoints, load_checkpoint, newest_intact, verify
from longvideo.train.dit import DiTTrainer

pytestmark = pytest.mark.usefixtures("one_thread")
tiny_vae, cache = base.tiny_vae, base.cache  # the DiT trainer tests' fixtures: a tiny VAE, a latent cache
_cfg, _losses, _overrides = base._cfg, base._losses, base._overrides


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, tiny_vae, cache, monkeypatch):
    """NaN losses at (0-based) steps 2, 3 and from 5 on: each such step changes no weight and is logged with
    a null loss; the run goes on after 2 in a row, and stops after max_bad_steps = 3 in a row with a
    one-line UserError; only finite checkpoints exist."""
    import longvideo.train.dit as dit

    tr = DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache, steps=12, save_every=1, keep=20, max_bad_steps=3))
    bad, now = {2, 3, *range(5, 12)}, {}
    real_loss, real_step = dit.micro_batch_loss, tr.train_step

    def loss(*a, **k):
        return real_loss(*a, **k) * (math.nan if now["step"] in bad else 1.0)

    monkeypatch.setattr(dit, "micro_batch_loss", loss)

    def step(s):
        now["step"] = s
        before = {k: v.clone() for k, v in tr.model.state_dict().items()}
        logs = real_step(s)
        unchanged = all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
        assert unchanged == (s in bad) == bool(logs.get("skipped")), s
        return logs

    monkeypatch.setattr(tr, "train_step", step)
    with pytest.raises(UserError, match=r"steps 6-8: the loss or the gradients were not finite 3 times"):
        tr.fit(progress=False)
    rows = _rows(tmp_path / "a")
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert [r["loss"] is None for r in rows] == [s in bad for s in range(8)]
    assert rows[-1]["skipped_total"] == 5
    ckpts = list_checkpoints(tmp_path / "a" / "ckpt")
    assert [p.name for p in ckpts] == [f"step_{i:07d}" for i in range(1, 8)]  # stopped before saving 8
    for p in ckpts:
        tensors, _, _ = load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in tensors["model"].values())


def test_exploding_run_through_the_cli_keeps_finite_checkpoints(tmp_path, tiny_vae, cache):
    """lr = 1e6: the weights blow up; the run stops with exit 2 and one error line, the result is valid
    JSON-free (no bare NaN printed), and every checkpoint left is finite."""
    (tmp_path / "dit.yaml").write_text("task: dit\n")
    out = tmp_path / "boom"
    over = _overrides(out, tiny_vae, cache, steps=40, save_every=2, keep=2, lr=1e6, warmup=0, grad_clip=0)
    run = subprocess.run([sys.executable, "-m", "longvideo", "train", str(tmp_path / "dit.yaml"), *over],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    errors = [ln for ln in run.stderr.splitlines() if ln.startswith("longvideo: error:")]
    assert run.returncode == 2 and len(errors) == 1 and "not finite" in errors[0], run.stderr[-800:]
    assert "NaN" not in run.stdout
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
    ckpts = list_checkpoints(out / "ckpt")
    for p in ckpts:
        tensors, _, _ = load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in tensors["model"].values()), p


def test_damaged_latest_checkpoint_falls_back(tmp_path, tiny_vae, cache, capsys):
    """Truncate / break each file of the newest checkpoint in turn: the resume takes the one before, says
    so, and the finished run's losses equal the uninterrupted run's."""
    ref = tmp_path / "ref"
    DiTTrainer(_cfg(ref, tiny_vae, cache, steps=6, save_every=2)).fit(progress=False)
    for name in ("model.safetensors", "ema.safetensors", "optim.safetensors", "optim.json", "trainer.json"):
        out = tmp_path / name
        DiTTrainer(_cfg(out, tiny_vae, cache, steps=6, save_every=2, stop_at=4)).fit(progress=False)
        bad = out / "ckpt" / "step_0000004" / name
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
        assert verify(bad.parent) is not None
        assert newest_intact(out / "ckpt").name == "step_0000002"
        capsys.readouterr()
        res = DiTTrainer(_cfg(out, tiny_vae, cache, steps=6, save_every=2)).fit(progress=False)
        assert "step_0000004 is damaged" in capsys.readouterr().err
        assert res["resumed"] and _losses(out) == _losses(ref)
    for p in (tmp_path / "model.safetensors" / "ckpt").iterdir():  # the last save rewrote step 4 whole
        assert verify(p) is None
    with pytest.raises(UserError, match="no intact checkpoint"):
        for p in list_checkpoints(tmp_path / "trainer.json" / "ckpt"):
            (p / "MANIFEST.json").write_text("{")
        newest_intact(tmp_path / "trainer.json" / "ckpt")


def test_resume_with_another_model_is_one_line(tmp_path, tiny_vae, cache):
    DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache, steps=2)).fit(progress=False)
    with pytest.raises(UserError, match=r"another model \(num_layers 2 -> 3.*transformer_blocks.2"):
        DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache, steps=4, **{"model.num_layers": 3})).fit(
            progress=False
        )


def test_one_run_per_folder_and_no_doubled_log(tmp_path, tiny_vae, cache):
    out = tmp_path / "r"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match="another training run is writing to"):
            DiTTrainer(_cfg(out, tiny_vae, cache, steps=2)).fit(progress=False)
    # a run killed after logging steps 3-4 (its newest checkpoint is step 2) and a torn last line
    DiTTrainer(_cfg(out, tiny_vae, cache, steps=6, save_every=2, stop_at=4)).fit(progress=False)
    import shutil

    shutil.rmtree(out / "ckpt" / "step_0000004")
    (out / "ckpt" / ".tmp_step_0000005_99999").mkdir()  # a half-written checkpoint of the killed run
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "lo')
    DiTTrainer(_cfg(out, tiny_vae, cache, steps=6, save_every=2)).fit(progress=False)
    assert [r["step"] for r in _rows(out)] == [1, 2, 3, 4, 5, 6]
    assert not any(p.name.startswith(".tmp") for p in (out / "ckpt").iterdir())


def test_checkpoints_hold_no_pickles(tmp_path, tiny_vae, cache):
    DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache, steps=2, save_every=2)).fit(progress=False)
    (ckpt,) = list_checkpoints(tmp_path / "a" / "ckpt")
    names = {p.name for p in ckpt.iterdir()}
    assert not any(n.endswith((".pt", ".pth", ".bin", ".pkl")) for n in names)
    assert {"optim.safetensors", "optim.json", "rng.json", "scaler.json", "MANIFEST.json"} <= names
    _, objects, _ = load_checkpoint(ckpt)
    assert isinstance(objects["rng"]["torch"], torch.Tensor) and objects["optim"]["state"]
