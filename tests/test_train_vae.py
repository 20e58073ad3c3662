"""VAE trainer: loss falls, exact resume, atomic checkpoints, export/load, decoder-only stage, CLI."""

import json
import subprocess
import sys

import pytest
import torch

from longvideo.cli import main
from longvideo.config import load_config
from longvideo.models.vae.io import load_vae, save_vae
from longvideo.models.vae.model import CausalVAE, vae_preset
from longvideo.train.checkpoint import list_checkpoints, verify
from longvideo.train.salient import salient_weights
from longvideo.train.vae import VAETrainConfig, VAETrainer, shapes_batch
from longvideo.train.vae_losses import adaptive_gan_weight, hinge_d_loss, hinge_g_loss, vae_loss

TINY = [
    "model.base_channels=8",
    "model.channel_mult=[1,2,2,2]",
    "model.num_res_blocks=1",
    "model.norm_groups=4",
    "data.height=48",
    "data.width=48",
    "video_frames=5",
    "batch_size=2",
    "image_batch_size=2",
    "lr=3e-3",
    "warmup=2",
    "log_every=1",
    "threads=1",
]


def tiny_cfg(tmp_path, *extra) -> VAETrainConfig:
    return load_config(VAETrainConfig, None, [*TINY, f"out={tmp_path / 'run'}", *extra])


def test_batches_are_deterministic_and_joint():
    cfg = load_config(VAETrainConfig, None, TINY)
    assert shapes_batch(cfg, 0).shape == (2, 3, 1, 48, 48)  # image step (image_every = 3)
    assert shapes_batch(cfg, 1).shape == (2, 3, 5, 48, 48)
    assert torch.equal(shapes_batch(cfg, 4), shapes_batch(cfg, 4))
    assert not torch.equal(shapes_batch(cfg, 4), shapes_batch(cfg, 5))


def test_salient_boost_weights_the_object_pixels(tmp_path):
    """salient_boost: the L1/MSE weight is 1 + boost on the pixels that differ from the clip's background
    (grown by salient_dilate), the loss is the weighted mean; a ratio nothing passes gives the plain loss."""
    cfg = tiny_cfg(tmp_path, "salient_boost=4", "salient_dilate=0", "mse_weight=10")
    x = shapes_batch(cfg, 1)  # a video batch: (B, 3, T, H, W)
    w = salient_weights(x, 4.0, cfg.salient_ratio, 0)
    bg = x.flatten(2).median(dim=2).values[:, :, None, None, None]  # each clip's background colour
    obj = (x - bg).abs().amax(dim=1, keepdim=True) > 1e-3
    assert 0 < obj.float().mean() < 0.2
    assert torch.equal(w, torch.where(obj, 5.0, 1.0))
    g = torch.Generator().manual_seed(0)  # errors larger on the objects, so the weighting must show
    rec = x + 0.1 * torch.randn(x.shape, generator=g) + 0.3 * obj
    kl = torch.zeros(2)
    loss, _ = vae_loss(x, rec, kl, 0.0, mse_weight=10.0, weight=w)
    err = rec - x
    want = ((err.abs() * w).sum((1, 2, 3, 4)) / (w.expand_as(err).sum((1, 2, 3, 4)))).mean()
    want = want + 10 * ((err.pow(2) * w).sum((1, 2, 3, 4)) / (w.expand_as(err).sum((1, 2, 3, 4)))).mean()
    torch.testing.assert_close(loss, want)
    plain, _ = vae_loss(x, rec, kl, 0.0, mse_weight=10.0)
    assert not torch.allclose(loss, plain, rtol=1e-3)
    # through the trainer: same step, same weights -> boost with no pixel passing == plain
    logs = {}
    runs = {"plain": [], "none": ["salient_boost=4", "salient_ratio=1e9"], "boost": ["salient_boost=4"]}
    for name, extra in runs.items():
        torch.manual_seed(0)
        logs[name] = VAETrainer(tiny_cfg(tmp_path / name, *extra)).train_step(1)["loss"]
    assert logs["none"] == pytest.approx(logs["plain"], rel=1e-6)
    assert logs["boost"] != pytest.approx(logs["plain"], rel=1e-3)


def test_resume_is_exact(tmp_path):
    straight = VAETrainer(tiny_cfg(tmp_path / "a", "steps=4", "save_every=100"))
    straight.fit(progress=False)
    first = VAETrainer(tiny_cfg(tmp_path / "b", "steps=2", "save_every=1"))
    first.fit(progress=False)
    resumed = VAETrainer(tiny_cfg(tmp_path / "b", "steps=4", "save_every=1"))
    assert resumed.fit(progress=False)["resumed"]
    for (k, a), b in zip(straight.vae.state_dict().items(), resumed.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert straight.ema.state_dict().keys() == resumed.ema.state_dict().keys()
    assert all(torch.equal(straight.ema.shadow[k], resumed.ema.shadow[k]) for k in straight.ema.shadow)
    logs_a = [json.loads(x)["loss"] for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    logs_b = [json.loads(x)["loss"] for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert logs_a == logs_b  # the same loss sequence, interrupted or not
    # a log line's loss_mean is the mean loss of the steps since the previous line
    every2 = VAETrainer(tiny_cfg(tmp_path / "c", "steps=4", "save_every=100", "log_every=2"))
    every2.fit(progress=False)
    means = [json.loads(x)["loss_mean"] for x in (tmp_path / "c/run/metrics.jsonl").read_text().splitlines()]
    assert means == pytest.approx([(logs_a[0] + logs_a[1]) / 2, (logs_a[2] + logs_a[3]) / 2], rel=1e-12)
    assert [p.name for p in list_checkpoints(tmp_path / "b/run/ckpt")] == [f"step_{i:07d}" for i in (2, 3, 4)]


def test_hinge_losses_and_the_adaptive_gan_weight():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = [0, 0.5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3.5 / 3))
    assert hinge_g_loss(fake).item() == pytest.approx(0.5 / 3)  # -mean(fake)
    # nll = |w - 1|^2 has gradient 2(w - 1); g = -3 * sum(w) has gradient -3 everywhere
    w = torch.tensor([2.0, 3.0, 1.0, 5.0], requires_grad=True)
    nll, g = (w - 1).pow(2).sum(), -3 * w.sum()
    expected = torch.tensor([2.0, 4.0, 0.0, 8.0]).norm() / (torch.full((4,), 3.0).norm() + 1e-4)
    assert adaptive_gan_weight(nll, g, w) == pytest.approx(expected.item(), rel=1e-6)
    assert adaptive_gan_weight(nll, 0 * w.sum(), w) == 1e4  # no GAN gradient: clamped, not inf
    (nll + g).backward()  # the graph is kept for the step's own backward
    assert torch.allclose(w.grad, torch.tensor([-1.0, 1.0, -3.0, 5.0]))


def test_gan_phase_trains_the_discriminator_and_resumes_exactly(tmp_path):
    """From gan_start the generator gets the adaptive GAN term and the discriminator its hinge step; the
    discriminator and its optimizer are checkpointed, so a resumed GAN run repeats the same losses."""
    gan = ["gan_start=2", "gan_adaptive=true", "gan_weight=0.5"]
    straight = VAETrainer(tiny_cfg(tmp_path / "a", "steps=5", "save_every=100", *gan))
    disc_before = {k: v.clone() for k, v in straight.disc.state_dict().items()}
    straight.fit(progress=False)
    logs = [json.loads(x) for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    assert [("d" in x, "g_weight" in x) for x in logs] == [(False, False)] * 2 + [(True, True)] * 3
    assert all(x["g_weight"] > 0 and x["d"] > 0 for x in logs[2:])
    assert any(not torch.equal(v, straight.disc.state_dict()[k]) for k, v in disc_before.items())
    first = VAETrainer(tiny_cfg(tmp_path / "b", "steps=3", "save_every=1", *gan))
    first.fit(progress=False)
    resumed = VAETrainer(tiny_cfg(tmp_path / "b", "steps=5", "save_every=1", *gan))
    assert resumed.fit(progress=False)["resumed"]
    logs_b = [json.loads(x) for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in logs_b] == [x["loss"] for x in logs]
    assert [x.get("d") for x in logs_b] == [x.get("d") for x in logs]
    for k, v in straight.disc.state_dict().items():
        assert torch.equal(v, resumed.disc.state_dict()[k]), k


def test_kill_mid_run_leaves_complete_checkpoints(tmp_path):
    """A process killed with SIGKILL while training: every checkpoint folder present is complete."""
    run = tmp_path / "k"
    args = [*TINY, f"out={run}", "steps=400", "save_every=1", "keep=100"]
    code = "import sys; from longvideo.cli import main; sys.exit(main(['train', sys.argv[1], *sys.argv[2:]]))"
    cfg = tmp_path / "k.yaml"
    cfg.write_text("task: vae\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(cfg), *args], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    import time

    deadline = time.time() + 60
    while time.time() < deadline and len(list_checkpoints(run / "ckpt")) < 3:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    ckpts = list_checkpoints(run / "ckpt")
    assert len(ckpts) >= 3
    for c in ckpts:
        files = {p.name for p in c.iterdir()}
        assert files == {"model.safetensors", "ema.safetensors", "optim.safetensors", "optim.json",
                         "trainer.json", "MANIFEST.json"}  # fmt: skip
        assert verify(c) is None
    resumed = VAETrainer(tiny_cfg(tmp_path / "unused", f"out={run}", f"steps={int(ckpts[-1].name[5:]) + 1}"))
    from longvideo.train import loop

    assert loop.resume(resumed, resumed.loop) == int(ckpts[-1].name[5:])


def test_loss_falls_export_and_decoder_stage(tmp_path):
    simple = ["data.backgrounds=[black]", "data.num_objects=[1]", "data.sizes=[large]", "lr=1e-2"]
    t = VAETrainer(tiny_cfg(tmp_path, "steps=40", "save_every=100", f"export={tmp_path / 'vae'}", *simple))
    x = torch.cat([shapes_batch(t.cfg, 10_000 + i) for i in (1, 4)])  # video batches never trained on

    def held_out_l1(vae):
        with torch.no_grad():
            return (vae(x, sample=False)[0] - x).abs().mean().item()

    before = held_out_l1(t.vae)
    t.fit(progress=False)
    assert held_out_l1(t.vae) < 0.6 * before
    vae = load_vae(tmp_path / "vae")
    assert isinstance(vae, CausalVAE) and vae.cfg.base_channels == 8
    # stage 2: the encoder stays frozen
    d = VAETrainer(tiny_cfg(tmp_path / "d", "steps=3", "stage=decoder", f"init={tmp_path / 'vae'}"))
    before = {k: v.clone() for k, v in d.vae.encoder.state_dict().items()}
    dec_before = d.vae.decoder.conv_out.conv.weight.clone()
    d.fit(progress=False)
    assert all(torch.equal(before[k], v) for k, v in d.vae.encoder.state_dict().items())
    assert not torch.equal(dec_before, d.vae.decoder.conv_out.conv.weight)


def test_vae_folder_errors(tmp_path):
    from longvideo.errors import UserError

    save_vae(CausalVAE(vae_preset("tiny")), tmp_path / "v")
    with pytest.raises(UserError, match="no VAE"):
        load_vae(tmp_path / "nothing")
    (tmp_path / "v" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read weights"):
        load_vae(tmp_path / "v")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["train", "{tmp}/missing.yaml"], "not found"),
        (["train", "{tmp}/c.yaml", "stepz=3"], "stepz"),
        (["train", "{tmp}/c.yaml", "video_frames=4"], "video_frames"),
        (["train", "{tmp}/other.yaml"], "unknown task 'frobnicate'"),
        (["train", "{tmp}/c.yaml", "task=frobnicate"], "unknown task 'frobnicate'"),  # the override wins
        (["train", "{tmp}/c.yaml", "task=no"], "unknown task 'no'"),  # YAML 1.2: a string, not False
        (["train", "{tmp}/c.yaml", "task=[1"], "bad override"),
        (["train", "{tmp}/c.yaml", "salient_dilate=-1"], "salient_dilate"),
        (["eval", "recon", "--model", "{tmp}"], "no VAE"),
        (["eval", "recon", "--frames", "8"], "--frames"),
        (["bench", "vae", "--model", "{tmp}/v", "--frames", "10"], "--frames must be 1 + a multiple of 4"),
        (["bench", "vae", "--model", "{tmp}/v", "--height", "60"], "multiples of 8"),
    ],
)
def test_cli_errors(tmp_path, capsys, argv, needle):
    (tmp_path / "c.yaml").write_text("task: vae\n")
    (tmp_path / "other.yaml").write_text("task: frobnicate\n")
    save_vae(CausalVAE(vae_preset("tiny")), tmp_path / "v")
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err


def test_cli_recon_and_bench(tmp_path, capsys):
    save_vae(CausalVAE(vae_preset("tiny")), tmp_path / "v")
    recon = ["eval", "recon", "--model", str(tmp_path / "v"), "--num", "1", "--frames", "9", "--json"]
    assert main(recon) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(res) >= {"psnr", "ssim"} and res["videos"] == 1
    assert main([*recon, "--chunk", "1"]) == 0
    streamed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert streamed["psnr"] == pytest.approx(res["psnr"], abs=1e-3)
    for extra in ([], ["--chunk", "0"]):
        assert main(["bench", "vae", "--model", str(tmp_path / "v"), "--frames", "17", *extra]) == 0
        b = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert b["frames"] == 17 and b["frames_per_s"] > 0 and b["stream"] == (not extra)


def test_recon_judge_scores_the_reconstructions():
    from types import SimpleNamespace

    from longvideo.eval.recon import shapes_recon

    class Identity:  # a perfect "VAE": the judge must then agree with the captions
        def encode(self, x):
            return SimpleNamespace(mean=x)

        def decode(self, z):
            return z

    res = shapes_recon(Identity(), num=6, frames=9, judge=True)
    assert res["psnr"] > 99 and res["judged"]["shape"] == 1.0 and res["judged"]["present"] == 1.0

    class Flat(Identity):  # everything decodes to the background: no object is found
        def decode(self, z):
            return z[:, :, :, :1, :1].expand_as(z)

    res = shapes_recon(Flat(), num=6, frames=9, judge=True)
    assert res["judged"]["found"] == 0.0 and "judged" not in shapes_recon(Flat(), num=1, frames=9)
