"""The DiT trainer: exact resume (also after kill -9), data parallel == one process, gradient accumulation,
LoRA, export, latent cache and bad configs. Tiny models on the shapes world (32x32, 5 frames)."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from longvideo.config import load_config
from longvideo.errors import UserError
from longvideo.models.vae.io import save_vae
from longvideo.models.vae.model import CausalVAE, vae_preset
from longvideo.train.dit import DiTTrainConfig, DiTTrainer
from longvideo.train.latent_cache import LatentCache, build_latent_cache


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> str:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    save_vae(CausalVAE(vae_preset("tiny")), folder)
    return str(folder)


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_vae) -> str:
    """A latent cache of 12 tiny shapes videos, built once by a 1-step run."""
    folder = tmp_path_factory.mktemp("cache") / "latents"
    DiTTrainer(_cfg(tmp_path_factory.mktemp("build"), tiny_vae, str(folder), steps=1)).fit(progress=False)
    return str(folder)


def _overrides(out, vae: str, cache: str, **kw) -> list[str]:
    base = {
        "task": "dit", "out": str(out), "vae": vae, "data.cache": cache, "data.num_videos": 12,
        "model.family": "full3d", "model.patch_size": "[1,2,2]", "model.cond_channels": 5,
        "p_image_cond": 0.2, "p_continue": 0.3, "lr": 5.0e-4, "min_lr_ratio": 0.05, "ema_decay": 0.999,
        "data.shapes.height": 48, "data.shapes.width": 48, "data.shapes.num_frames": 5,
        "model.num_layers": 2, "model.num_heads": 2, "model.head_dim": 12, "model.text_dim": 16,
        "text_max_length": 24, "batch_size": 4, "steps": 6, "warmup": 2, "log_every": 1, "save_every": 2,
        "threads": 1, "device": "cpu", "export": "''", "text_encoder": "auto",
    }  # fmt: skip
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _cfg(out, vae: str, cache: str, **kw) -> DiTTrainConfig:
    return load_config(DiTTrainConfig, None, _overrides(out, vae, cache, **kw))


def _losses(out) -> list[float]:
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in rows}  # a re-logged step (after a resume) must agree
    return [by_step[s] for s in sorted(by_step)]


def test_latent_cache_and_stats(cache, tiny_vae):
    lc = LatentCache(cache)
    assert len(lc) == 12 and lc.latents.shape[1:] == (4, 2, 6, 6)  # tiny VAE: 4 ch, 5 frames -> 2, 48/8
    z, caption = lc[3]
    assert z.dtype == torch.float32 and caption.startswith("a ")
    mean, std = lc.channel_stats()
    assert len(mean) == 4 and all(s > 0 for s in std)


def test_latent_cache_refuses_another_encoder(tmp_path):
    """Same VAE config, other encoder weights -> other latents: refused, never mixed. A new decoder or new
    latent statistics leave the latents as they are: the cache is kept."""
    torch.manual_seed(0)
    vae = CausalVAE(vae_preset("tiny"))
    items = lambda i: (torch.zeros(3, 5, 16, 16) + i / 10, {"caption": f"clip {i}"})  # noqa: E731
    build_latent_cache(tmp_path, vae, items, 4, {"kind": "test"}, shard_size=2, progress=False)
    first = LatentCache(tmp_path).latents.clone()
    (tmp_path / "shard_000001.safetensors").unlink()  # an interrupted build resumes with the same VAE
    with torch.no_grad():
        next(vae.decoder.parameters()).add_(1.0)
    vae.cfg.latents_mean, vae.cfg.latents_std = [0.5] * 4, [2.0] * 4
    build_latent_cache(tmp_path, vae, items, 4, {"kind": "test"}, shard_size=2, progress=False)
    assert torch.equal(LatentCache(tmp_path).latents, first)
    with torch.no_grad():
        next(vae.encoder.parameters()).add_(1e-3)
    with pytest.raises(UserError, match="another VAE encoder"):
        build_latent_cache(tmp_path, vae, items, 4, {"kind": "test"}, shard_size=2, progress=False)
    meta = tmp_path / "cache.json"  # a cache written before encoder digests: refused, not trusted
    meta.write_text(json.dumps(json.loads(meta.read_text()) | {"format": 1}))
    with pytest.raises(UserError, match="older format"):
        build_latent_cache(tmp_path, vae, items, 4, {"kind": "test"}, shard_size=2, progress=False)


def test_latent_cache_grows(tmp_path):
    """Asking an existing cache for more items encodes only the new ones (and the old last shard if it was
    not full) and gives the cache a fresh build would; asking for fewer is refused in one line."""
    torch.manual_seed(0)
    vae = CausalVAE(vae_preset("tiny"))
    asked = []

    def items(i):
        asked.append(i)
        pixels = torch.zeros(3, 5, 16, 16) + torch.sin(torch.arange(16.0) * (i + 1)) / 2
        return pixels, {"caption": f"clip {i}"}

    def build(out, n):
        build_latent_cache(out, vae, items, n, {"kind": "t"}, shard_size=2, progress=False)

    build(tmp_path / "fresh", 7)
    build(tmp_path / "grown", 3)
    asked.clear()
    build(tmp_path / "grown", 7)
    assert asked == [2, 3, 4, 5, 6]  # shard 1 held item 2 only: encoded again with item 3
    fresh, grown = LatentCache(tmp_path / "fresh"), LatentCache(tmp_path / "grown")
    assert torch.equal(grown.latents, fresh.latents) and grown.rows == fresh.rows
    assert (tmp_path / "grown" / "cache.json").read_text() == (tmp_path / "fresh" / "cache.json").read_text()
    with pytest.raises(UserError, match="7 items, more than the 4 asked"):
        build(tmp_path / "grown", 4)


def test_resume_is_exact(tmp_path, tiny_vae, cache):
    full = DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache)).fit(progress=False)
    assert full["steps"] == 6
    DiTTrainer(_cfg(tmp_path / "b", tiny_vae, cache, stop_at=3)).fit(progress=False)
    res = DiTTrainer(_cfg(tmp_path / "b", tiny_vae, cache)).fit(progress=False)
    assert res["resumed"]
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")
    from longvideo.train.checkpoint import latest_checkpoint, load_checkpoint

    wa, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "a" / "ckpt"))
    wb, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "b" / "ckpt"))
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
        assert torch.equal(wa["ema"][k], wb["ema"][k]), k


def test_kill_9_then_rerun_continues_exactly(tmp_path, tiny_vae, cache):
    ref = tmp_path / "ref"
    DiTTrainer(_cfg(ref, tiny_vae, cache, steps=8)).fit(progress=False)
    out = tmp_path / "killed"
    (tmp_path / "dit.yaml").write_text("task: dit\n")
    cmd = [sys.executable, "-m", "longvideo", "train", str(tmp_path / "dit.yaml"),
           *_overrides(out, tiny_vae, cache, steps=8, save_every=1)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "ckpt" / "step_0000003").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpts = sorted(p.name for p in (out / "ckpt").iterdir())
    assert all(name.startswith("step_") or name.startswith(".tmp") for name in ckpts)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert _losses(out) == _losses(ref)


def test_grad_accum_equals_one_big_batch(tmp_path, tiny_vae, cache):
    DiTTrainer(_cfg(tmp_path / "a", tiny_vae, cache, steps=3)).fit(progress=False)
    DiTTrainer(_cfg(tmp_path / "b", tiny_vae, cache, steps=3, grad_accum=2)).fit(progress=False)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, overrides: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    from longvideo.parallel import shutdown

    cfg = load_config(DiTTrainConfig, None, overrides)
    try:
        DiTTrainer(cfg).fit(progress=False)
    finally:
        shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_process_gloo_equals_one_process(tmp_path, tiny_vae, cache, mode):
    DiTTrainer(_cfg(tmp_path / "one", tiny_vae, cache, steps=3)).fit(progress=False)
    over = _overrides(tmp_path / "two", tiny_vae, cache, steps=3, parallel=mode)
    mp.start_processes(_worker, args=(2, _free_port(), over), nprocs=2, start_method="spawn")
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(two) == 3
    assert two == pytest.approx(one, rel=1e-5)
    # the exported / checkpointed weights agree as well
    from longvideo.train.checkpoint import latest_checkpoint, load_checkpoint

    wa, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "one" / "ckpt"))
    wb, _, _ = load_checkpoint(latest_checkpoint(tmp_path / "two" / "ckpt"))
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("world, mode", [(2, "ddp"), (4, "fsdp")])
def test_sequence_parallel_training_equals_one_process_and_resumes(tmp_path, tiny_vae, cache, world, mode):
    """sp 2 (dp 1 x sp 2 with DDP over the sp ranks; dp 2 x sp 2 with FSDP2 over all four): the loss
    sequence of one process, image steps (one latent frame: run whole on each sp rank) included; stopped at
    step 3 and resumed, it goes on exactly (dp 2 x sp 1 is test_two_process_gloo_equals_one_process)."""
    kw = {"steps": 5, "data.image_every": 2}
    DiTTrainer(_cfg(tmp_path / "one", tiny_vae, cache, **kw)).fit(progress=False)
    over = _overrides(tmp_path / "sp", tiny_vae, cache, parallel=mode, sp=2, **kw)
    mp.start_processes(
        _worker, args=(world, _free_port(), [*over, "stop_at=3"]), nprocs=world, start_method="spawn"
    )
    assert len(_losses(tmp_path / "sp")) == 3
    mp.start_processes(_worker, args=(world, _free_port(), over), nprocs=world, start_method="spawn")
    one, sp = _losses(tmp_path / "one"), _losses(tmp_path / "sp")
    assert len(sp) == 5
    assert sp == pytest.approx(one, rel=1e-5)


def test_lora_trains_adapters_and_exports_merged(tmp_path, tiny_vae, cache):
    from longvideo.pipelines.video import VideoPipeline

    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=2, export=str(base / "export"))).fit(progress=False)
    tr = DiTTrainer(_cfg(tmp_path / "lora", tiny_vae, cache, steps=3, init=str(base / "export"),
                         **{"lora.rank": 4, "export": str(tmp_path / "lora" / "export")}))  # fmt: skip
    trainable = [n for n, p in tr.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    tr.fit(progress=False)
    pipe = VideoPipeline.from_pretrained(tmp_path / "lora" / "export")
    before = VideoPipeline.from_pretrained(base / "export").transformer.state_dict()
    after = pipe.transformer.state_dict()
    assert set(before) == set(after)  # merged: the plain model's keys
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed and all(("to_q" in k or "to_k" in k or "to_v" in k or "to_out" in k) for k in changed)
    video = pipe("a small red square staying still on a black background", frames=5, height=48, width=48,
                 steps=2, progress=False)  # fmt: skip
    assert video.shape == (1, 3, 5, 48, 48) and torch.isfinite(video).all()


def test_freeze_globs(tmp_path, tiny_vae, cache):
    tr = DiTTrainer(_cfg(tmp_path / "f", tiny_vae, cache, trainable="[transformer_blocks.1.*]"))
    names = [n for n, p in tr.model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("transformer_blocks.1.") for n in names)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"batch_size": 3, "grad_accum": 2}, "multiple of data-parallel ranks x grad_accum"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"parallel": "pipeline"}, "parallel must be"),
        ({"p_image_cond": 0.8, "p_continue": 0.5}, r"p_image_cond \+ p_continue"),
        ({"text_encoder": "new:clip"}, "new:shapes"),
        ({"cond_noise": 1.0}, "cond_noise"),
        ({"salient_boost": -1}, "salient_boost"),
        # the model's sizes are the frozen parts' own: checked, never rewritten
        ({"model.in_channels": 8}, r"VAE makes 4 latent channels: set model.in_channels=4"),
        ({"model.cond_channels": 17}, r"cond_channels is 17: 0 .* or 5"),
        ({"text_encoder": "shapes"}, r"text encoder gives 64-d states: set model.text_dim=64"),
        ({"data.source": "manifest"}, "needs data.manifest"),
    ],
)
def test_bad_configs(tmp_path, tiny_vae, cache, kw, msg):
    with pytest.raises(UserError, match=msg):
        DiTTrainer(_cfg(tmp_path / "x", tiny_vae, cache, **kw))


def test_trainer_leaves_its_config_as_given(tmp_path, tiny_vae, cache):
    """No hidden mutation: building and running a trainer (post-tuning picks its own trainable globs, the
    cache sets the VAE's latent statistics) leaves the config object equal to what was passed in."""
    import copy
    import dataclasses

    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=1, export=str(base / "export"))).fit(progress=False)
    kw = {"data.shapes.num_frames": 9, "data.num_videos": 4, "extend.frames": 3, "extend.base_frames": 2}
    for cfg in (_cfg(tmp_path / "a", tiny_vae, cache, steps=1),
                _cfg(tmp_path / "b", tiny_vae, "''", steps=1, init=str(base / "export"), **kw)):  # fmt: skip
        before = copy.deepcopy(dataclasses.asdict(cfg))
        tr = DiTTrainer(cfg)
        tr.fit(progress=False)
        assert dataclasses.asdict(cfg) == before
    assert tr.trainable and not cfg.trainable  # post-tuning's globs live in the trainer


def test_cli_bad_key_is_one_line(tmp_path):
    (tmp_path / "dit.yaml").write_text("task: dit\n")
    run = subprocess.run(
        [sys.executable, "-m", "longvideo", "train", str(tmp_path / "dit.yaml"), "nope=1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "nope" in run.stderr


def test_manifest_source_trains_on_buckets(tmp_path, tiny_vae):
    from longvideo.data.shapes import ShapesConfig
    from longvideo.data.shapes_dataset import write_shapes_dataset

    write_shapes_dataset(tmp_path / "data", 6, ShapesConfig(height=48, width=48, num_frames=9), seed=3,
                         progress=False)  # fmt: skip
    tr = DiTTrainer(_cfg(tmp_path / "m", tiny_vae, "''", steps=2, batch_size=2, **{
        "data.source": "manifest", "data.manifest": str(tmp_path / "data" / "manifest.jsonl"),
        "data.buckets": "[[5,48,48],[9,48,48]]"}))  # fmt: skip
    assert set(tr.batches.dataset.buckets) == {(9, 48, 48)}
    res = tr.fit(progress=False)
    assert res["steps"] == 2 and all(torch.isfinite(torch.tensor(_losses(tmp_path / "m"))))


def test_bf16_autocast_checkpointing_and_tensorboard(tmp_path, tiny_vae, cache):
    out = tmp_path / "bf"
    tr = DiTTrainer(_cfg(out, tiny_vae, cache, steps=2, mixed_precision="bf16", activation_checkpointing=True,
                         tensorboard=True))  # fmt: skip
    tr.fit(progress=False)
    losses = _losses(out)
    assert len(losses) == 2 and all(0 < x < 10 for x in losses)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # activation checkpointing recomputes, it does not change the result
    ckpt = _cfg(tmp_path / "a", tiny_vae, cache, steps=2, activation_checkpointing=True)
    DiTTrainer(ckpt).fit(progress=False)
    DiTTrainer(_cfg(tmp_path / "b", tiny_vae, cache, steps=2)).fit(progress=False)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), rel=1e-6)


def test_extend_post_tunes_only_temporal_parts(tmp_path, tiny_vae, cache):
    """ExVideo post-tuning through the trainer: 5 -> 9 frames (2 -> 3 latent frames) with RIFLEx and the
    identity adapter; only the adapter and the self-attentions move; the export loads and generates."""
    from longvideo.pipelines.video import VideoPipeline

    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=2, export=str(base / "export"))).fit(progress=False)
    kw = {"data.shapes.num_frames": 9, "data.num_videos": 4, "extend.frames": 3, "extend.base_frames": 2,
          "export": str(tmp_path / "ext" / "export")}  # fmt: skip
    tr = DiTTrainer(_cfg(tmp_path / "ext", tiny_vae, "''", steps=2, init=str(base / "export"), **kw))
    trainable = {n for n, p in tr.model.named_parameters() if p.requires_grad}
    assert trainable and all("temporal_adapter" in n or ".attn1." in n for n in trainable)
    tr.fit(progress=False)
    pipe = VideoPipeline.from_pretrained(tmp_path / "ext" / "export")
    assert pipe.transformer.cfg.temporal_adapter and pipe.transformer.cfg.rope_riflex_frames == 3
    before = VideoPipeline.from_pretrained(base / "export").transformer.state_dict()
    after = pipe.transformer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn1." in k for k in changed)
    assert any("temporal_adapter" in k for k in set(after) - set(before))
    video = pipe("a small red square staying still on a black background", frames=9, height=48, width=48,
                 steps=2, progress=False)  # fmt: skip
    assert video.shape == (1, 3, 9, 48, 48) and torch.isfinite(video).all()
    with pytest.raises(UserError, match="init"):
        _cfg(tmp_path / "x", tiny_vae, cache, **{"extend.frames": 3, "extend.base_frames": 2}).validate()


def test_cond_noise_augments_only_the_known_frames(tmp_path, tiny_vae, cache):
    """cond_noise > 0: the known frames reach the model noised (time <= cond_noise), the rest of each
    sample's randomness is unchanged, and cond_noise = 0 draws exactly what it drew before."""
    from longvideo.diffusion import NoiseSchedule
    from longvideo.train.dit_draws import sample_draw

    kw = {"p_continue": 1.0, "p_image_cond": 0.0}
    clean = _cfg(tmp_path / "a", tiny_vae, cache, **kw).validate()
    noisy = _cfg(tmp_path / "b", tiny_vae, cache, cond_noise=0.3, **kw).validate()
    sched, shape = NoiseSchedule(clean.diffusion), (4, 3, 6, 6)
    for j in range(4):
        a = sample_draw(clean, 5, j, shape, sched)
        b = sample_draw(noisy, 5, j, shape, sched)
        assert a.known_eps is None and b.known_eps is not None and 0 <= b.known_t <= 0.3
        assert b.known_eps.shape == (4, b.known, 6, 6)
        assert a.t == b.t and torch.equal(a.eps, b.eps)
        assert (a.known, a.drop_caption) == (b.known, b.drop_caption)
    DiTTrainer(_cfg(tmp_path / "run", tiny_vae, cache, steps=2, cond_noise=0.3, **kw)).fit(progress=False)
    assert all(math.isfinite(v) for v in _losses(tmp_path / "run"))


def test_salient_boost_reweights_the_loss(tmp_path, tiny_vae, cache):
    """salient_boost weights the loss toward object tokens: with a ratio no token passes the loss is the
    plain mean (same step, same draws); with the default ratio it differs."""
    from longvideo.train.dit_draws import micro_batch_loss, sample_draw

    runs = {
        "plain": {},
        "none_pass": {"salient_boost": 4, "salient_ratio": 1e9},
        "boost": {"salient_boost": 4},
    }
    tr = {k: DiTTrainer(_cfg(tmp_path / k, tiny_vae, cache, **kw)) for k, kw in runs.items()}
    loss = {}
    for k, t in tr.items():
        latents, text, mask = t.batches.load(0, t.batches.global_batch(0))
        draws = [sample_draw(t.cfg, 0, j, tuple(latents.shape[1:]), t.sched) for j in range(4)]
        with torch.no_grad():
            empty = t.batches.empty_text
            loss[k] = micro_batch_loss(t.model, t.cfg, t.sched, draws, latents, text, mask, empty, None)
    torch.testing.assert_close(loss["none_pass"], loss["plain"], rtol=1e-5, atol=0)
    assert not torch.allclose(loss["boost"], loss["plain"], rtol=1e-3)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_stages_keep_the_text_encoder(tmp_path, tiny_vae, cache):
    """A DiT trained in stages keeps reading the encoder it learnt: "auto" with init loads the init's, the
    built-in one is the same whatever the run's seed, and a fresh one with init is refused."""
    from longvideo.pipelines.video import VideoPipeline
    from longvideo.train.dit_data import make_text_encoder

    new = make_text_encoder("new:shapes", 24, 16).model
    assert _same_weights(new, make_text_encoder("auto", 24, 16).model)
    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=1, seed=3, export=str(base / "export"))).fit(progress=False)
    exported = VideoPipeline.from_pretrained(base / "export").text_encoder.model
    assert _same_weights(new, exported)
    tr = DiTTrainer(_cfg(tmp_path / "s2", tiny_vae, cache, steps=1, seed=7, init=str(base / "export")))
    assert _same_weights(tr.text_encoder.model, exported)
    with pytest.raises(UserError, match="new:shapes"):
        DiTTrainer(
            _cfg(
                tmp_path / "s3",
                tiny_vae,
                cache,
                **{"init": str(base / "export"), "text_encoder": "new:shapes"},
            )
        )


def test_init_may_add_zero_branches_but_not_change_the_model(tmp_path, tiny_vae, cache):
    """A stage may switch on a zero-initialised branch (caption_pool): same function at its start; any other
    difference from the init transformer is a one-line error."""
    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=1, export=str(base / "export"))).fit(progress=False)
    init = str(base / "export")
    pooled = DiTTrainer(
        _cfg(tmp_path / "p", tiny_vae, cache, steps=1, init=init, **{"model.caption_pool": True})
    )
    plain = DiTTrainer(_cfg(tmp_path / "q", tiny_vae, cache, steps=1, init=init))
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(2, 4, 2, 6, 6, generator=g), torch.randn(2, 5, 16, generator=g)
    t = torch.tensor([100.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(pooled.model(x, t, text), plain.model(x, t, text), rtol=0, atol=0)
    with pytest.raises(UserError, match="does not match the init"):
        DiTTrainer(_cfg(tmp_path / "r", tiny_vae, cache, steps=1, init=init, **{"model.num_heads": 3}))


def test_init_into_a_deeper_model(tmp_path, tiny_vae, cache):
    """More blocks than the init: old block i lands at i * new // old, the new blocks start as identities
    (the init's function, to float rounding) and then train; fewer blocks is a one-line error."""
    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=2, export=str(base / "export"))).fit(progress=False)
    init = str(base / "export")
    old = DiTTrainer(_cfg(tmp_path / "o", tiny_vae, cache, steps=1, init=init)).model
    tr = DiTTrainer(_cfg(tmp_path / "n", tiny_vae, cache, steps=3, init=init, **{"model.num_layers": 5}))
    new, nsd = tr.model, tr.model.state_dict()
    for k, v in old.state_dict().items():  # 2 -> 5 blocks: old 0 -> 0, old 1 -> 2; new 1, 3, 4
        assert torch.equal(v, nsd[k.replace("transformer_blocks.1.", "transformer_blocks.2.")]), k
    for i in (1, 3, 4):
        blk = new.transformer_blocks[i]
        outs = (blk.attn1.to_out[0], blk.attn2.to_out[0], blk.ff.net[2])
        assert all(not p.any() for o in outs for p in o.parameters())
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # 2 steps leave the zero-initialised outputs near zero: give both the same weights
        for i, j in ((0, 0), (1, 2)):
            w = torch.randn(old.transformer_blocks[i].attn2.to_out[0].weight.shape, generator=g) * 0.3
            old.transformer_blocks[i].attn2.to_out[0].weight.copy_(w)
            new.transformer_blocks[j].attn2.to_out[0].weight.copy_(w)
        w = torch.randn(old.proj_out.weight.shape, generator=g) * 0.3
        old.proj_out.weight.copy_(w)
        new.proj_out.weight.copy_(w)
    x, text = torch.randn(2, 4, 2, 6, 6, generator=g), torch.randn(2, 5, 16, generator=g)
    t = torch.tensor([100.0, 900.0])
    with torch.no_grad():
        ref = old(x, t, text)
        assert ref.abs().mean() > 0.1
        torch.testing.assert_close(new(x, t, text), ref)
    tr.fit(progress=False)
    assert all(math.isfinite(x) for x in _losses(tmp_path / "n"))
    rows = [json.loads(x) for x in (tmp_path / "n" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss_mean"] for r in rows] == [r["loss"] for r in rows]  # log_every 1: a mean of one step
    assert new.transformer_blocks[1].ff.net[2].weight.any()  # the new blocks train
    with pytest.raises(UserError, match="not lose blocks"):
        DiTTrainer(_cfg(tmp_path / "s", tiny_vae, cache, steps=1, init=init, **{"model.num_layers": 1}))


def test_init_into_a_smaller_patch(tmp_path, tiny_vae, cache):
    """A DiT with 1x1 patches starts from a trained 2x2 one: same blocks; a token embeds its one cell as the
    old token embedded a patch filled with it, and outputs the old token's values pooled. Growing the patch,
    or a block of another shape, is a one-line error."""
    base = tmp_path / "base"
    DiTTrainer(_cfg(base, tiny_vae, cache, steps=2, export=str(base / "export"))).fit(progress=False)
    init = str(base / "export")
    old = DiTTrainer(_cfg(tmp_path / "o", tiny_vae, cache, steps=1, init=init)).model
    assert list(old.cfg.patch_size) == [1, 2, 2]
    small = {"model.patch_size": [1, 1, 1], "model.rope_scale": [1, 2, 2]}
    tr = DiTTrainer(_cfg(tmp_path / "n", tiny_vae, cache, steps=2, init=init, **small))
    new = tr.model
    osd, nsd = old.state_dict(), new.state_dict()
    blocks = [k for k in osd if k.startswith("transformer_blocks.")]
    assert blocks and all(torch.equal(osd[k], nsd[k]) for k in blocks)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        cells = torch.randn(2, old.pos_embed.proj.in_channels, 2, 3, 3, generator=g)
        filled = cells.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # each cell fills a 2x2 patch
        torch.testing.assert_close(new.pos_embed.proj(cells), old.pos_embed.proj(filled))
        h = torch.randn(5, old.cfg.dim, generator=g)
        pooled = old.proj_out(h).reshape(5, 2, 2, old.cfg.out_channels).mean(dim=(1, 2))
        torch.testing.assert_close(new.proj_out(h), pooled)
    tr.fit(progress=False)
    assert all(math.isfinite(x) for x in _losses(tmp_path / "n"))
    tiny = str(tmp_path / "n" / "export")
    tr.export(tiny)
    with pytest.raises(UserError, match="must divide"):
        DiTTrainer(_cfg(tmp_path / "g", tiny_vae, cache, steps=1, init=tiny))
    with pytest.raises(UserError, match="does not match the init"):
        DiTTrainer(_cfg(tmp_path / "h", tiny_vae, cache, steps=1, init=init, **{"model.num_heads": 3}))
