"""`VideoPipeline` on a tiny random pipeline (tiny VAE, tiny DiT with [latents | mask] channels, tiny T5):
folder round trip, seeds, frame rounding, the one conditioning path of T2V / I2V / continuation, guidance
batching, streamed file output, and the one-line errors."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from longvideo.data.video_io import probe
from longvideo.errors import UserError
from longvideo.pipelines import GenerationRequest, VideoPipeline
from longvideo.pipelines.inputs import generated_frames, scale_latents
from longvideo.pipelines.tiny import tiny_pipeline

torch.set_num_threads(1)

PROMPT = "a large red circle moving right quickly on a black background"
FAST = dict(steps=2, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipes") / "tiny"
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def calls(pipe, monkeypatch):
    """Every transformer call's inputs, recorded (the DiT still runs)."""
    seen = []
    forward = pipe.transformer.forward

    def recorder(x, t, text, text_mask=None, cond=None, pooled=None):
        seen.append({"x": x.clone(), "t": t.clone(), "cond": None if cond is None else cond.clone()})
        return forward(x, t, text, text_mask, cond, pooled)

    monkeypatch.setattr(pipe.transformer, "forward", recorder)
    return seen


def test_round_trip_same_output(pipe, saved):
    names = {"model_index.json", "vae", "transformer", "text_encoder", "tokenizer", "scheduler"}
    assert names <= {p.name for p in saved.iterdir()}
    for part in ("vae", "transformer", "text_encoder"):
        assert (saved / part / "config.json").is_file() and (saved / part / "model.safetensors").is_file()
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "VideoPipeline" and index["text_encoder_config"]["max_length"] == 16
    loaded = VideoPipeline.from_pretrained(saved)
    assert loaded.defaults == pipe.defaults and loaded.diffusion == pipe.diffusion
    assert next(loaded.transformer.parameters()).device.type == "cpu"
    assert torch.equal(loaded(PROMPT, seed=3, **FAST), pipe(PROMPT, seed=3, **FAST))
    # saving over a pipeline folder replaces it; other folders are never overwritten
    loaded.save_pretrained(saved)
    assert (saved / "model_index.json").is_file() and not list(saved.parent.glob(".tiny*"))
    (saved.parent / "other").mkdir()
    (saved.parent / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a pipeline folder"):
        pipe.save_pretrained(saved.parent / "other")
    assert (saved.parent / "other" / "notes.txt").read_text() == "keep me"


def test_seeds(pipe):
    rng = torch.get_rng_state()
    a, b = pipe(PROMPT, seed=7, **FAST), pipe(PROMPT, seed=7, **FAST)
    c = pipe(PROMPT, seed=8, **FAST)
    assert a.shape == (1, 3, 9, 32, 32) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), rng)  # a private generator: the global RNG is untouched
    # the ancestral sampler draws fresh noise from the same generator: still reproducible
    kw = dict(sampler="euler_ancestral", seed=2, **FAST)
    assert torch.equal(pipe(PROMPT, **kw), pipe(PROMPT, **kw))


def test_frame_rounding(pipe, calls):
    assert [generated_frames(n, 4) for n in (1, 2, 5, 6, 9, 10)] == [1, 5, 5, 9, 9, 13]
    out = pipe(PROMPT, frames=6, **FAST)
    assert out.shape[2] == 6 and calls[0]["x"].shape[2] == 3  # 9 frames generated: 3 latent frames
    full = pipe(PROMPT, frames=9, **FAST)
    assert torch.equal(out, full[:, :, :6])  # the requested frames are a prefix of the rounded-up video
    calls.clear()
    assert pipe(PROMPT, frames=1, **FAST).shape[2] == 1 and calls[0]["x"].shape[2] == 1


def _expected_latents(pipe, pixels):
    return scale_latents(pipe.vae.encode(pixels).mode(), pipe.vae.cfg)


@pytest.mark.parametrize("task", ["t2v", "i2v", "i2v_pil", "i2v_tensor", "continue"])
def test_one_conditioning_path(pipe, calls, task):
    """The DiT's cond is [masked latents | mask]: the mask is 1 exactly at the known latent frames, the
    masked latents there are the VAE encoding of the image / clip (scaled), zeros elsewhere."""
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(32, 32, 3, generator=g) * 255).round().to(torch.uint8).numpy()
    img_t = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1  # (3, H, W)
    clip = torch.rand(1, 3, 5, 32, 32, generator=g) * 2 - 1
    kwargs, known = {}, 0
    if task.startswith("i2v"):
        image = {"i2v": img, "i2v_tensor": img_t}.get(task)
        if task == "i2v_pil":
            image = pytest.importorskip("PIL.Image").fromarray(img)
        kwargs, known, pixels = {"image": image}, 1, img_t[None, :, None]
    elif task == "continue":
        kwargs, known, pixels = {"known": clip}, 2, clip
    pipe(PROMPT, frames=9, guidance=2.0, **FAST, **kwargs)
    assert len(calls) == 2
    cond = calls[0]["cond"]
    c = pipe.vae.cfg.latent_channels
    assert cond.shape == (2, c + 1, 3, 4, 4)  # both halves of the guided batch get the same known frames
    assert all(torch.equal(call["cond"], cond) for call in calls) and torch.equal(cond[0], cond[1])
    mask = cond[:, c]
    assert torch.equal(mask[:, :known], torch.ones_like(mask[:, :known]))
    assert torch.equal(mask[:, known:], torch.zeros_like(mask[:, known:]))
    assert torch.equal(cond[:, :c, known:], torch.zeros_like(cond[:, :c, known:]))
    if known:
        with torch.no_grad():
            want = _expected_latents(pipe, pixels)
        assert want.shape[2] == known
        torch.testing.assert_close(cond[:1, :c, :known], want, rtol=1e-5, atol=1e-5)


def test_image_is_resized_and_cropped(pipe, calls):
    wide = np.zeros((40, 80, 3), np.uint8)
    wide[:, 16:64] = 255  # white around the centre square; the sides black (cropped away)
    pipe(PROMPT, image=wide, frames=1, guidance=1.0, **FAST)
    white = torch.ones(1, 3, 1, 32, 32)
    with torch.no_grad():
        want = _expected_latents(pipe, white)
    torch.testing.assert_close(calls[0]["cond"][:, :4, :1], want, rtol=1e-4, atol=1e-4)


def test_guidance_doubles_the_batch_in_one_call(pipe, calls):
    pipe(PROMPT, guidance=3.0, steps=3, progress=False)
    assert [call["x"].shape[0] for call in calls] == [2, 2, 2]
    assert all(torch.equal(call["x"][0], call["x"][1]) for call in calls)
    calls.clear()
    pipe(PROMPT, guidance=1.0, steps=3, progress=False)
    assert [call["x"].shape[0] for call in calls] == [1, 1, 1]


def test_callback_per_step(pipe):
    steps = []
    pipe(PROMPT, steps=3, progress=False, callback=lambda i, t, x, x0: steps.append((i, x.shape)))
    assert [i for i, _ in steps] == [0, 1, 2] and steps[0][1] == (1, 4, 3, 4, 4)


def test_generate_to_file_streams(pipe, tmp_path, monkeypatch):
    chunks = []
    decode_stream = pipe.vae.decode_stream

    def spy(z, chunk=4):
        for x in decode_stream(z, chunk=chunk):
            chunks.append(x.shape[2])
            yield x

    monkeypatch.setattr(pipe.vae, "decode_stream", spy)
    out = tmp_path / "v.mp4"
    summary = pipe.generate_to_file(out, PROMPT, frames=6, decode_chunk=1, seed=4, **FAST)
    info = probe(out)
    assert (info.num_frames, info.width, info.height, info.fps) == (6, 32, 32, 8.0)
    assert summary["frames"] == 6 and summary["path"] == str(out) and summary["seconds"] > 0
    assert chunks == [1, 4, 4]  # one latent frame per chunk: frames written as they are decoded
    # the file holds the same video as __call__ (up to H.264)
    from longvideo.data.video_io import read_video, to_uint8_frames

    want = to_uint8_frames(pipe(PROMPT, frames=6, seed=4, **FAST)).astype(np.float32)
    assert np.abs(read_video(out).astype(np.float32) - want).mean() < 20


def test_errors(pipe, tmp_path):
    with pytest.raises(UserError, match="prompt is empty"):
        pipe("  ", **FAST)
    with pytest.raises(UserError, match=r"height 40 is not a multiple of 16 .*: use 32 or 48"):
        pipe(PROMPT, height=40, **FAST)
    with pytest.raises(UserError, match=r"width 8 .*: use 16"):
        pipe(PROMPT, width=8, **FAST)
    with pytest.raises(UserError, match="frames must be an integer >= 1"):
        pipe(PROMPT, frames=0, **FAST)
    with pytest.raises(UserError, match="unknown sampler"):
        pipe(PROMPT, sampler="magic", **FAST)
    with pytest.raises(UserError, match="guidance must be >= 1"):
        pipe(PROMPT, guidance=0.5, **FAST)
    with pytest.raises(UserError, match="1 \\+ a multiple of 4 frames"):
        pipe(PROMPT, known=torch.zeros(1, 3, 4, 32, 32), **FAST)
    with pytest.raises(UserError, match="longer than the video"):
        pipe(PROMPT, known=torch.zeros(1, 3, 9, 32, 32), frames=5, **FAST)
    with pytest.raises(UserError, match="not both"):
        pipe(PROMPT, image=np.zeros((32, 32, 3), np.uint8), known=torch.zeros(1, 3, 1, 32, 32), **FAST)
    with pytest.raises(UserError, match="uint8"):
        pipe(PROMPT, image=np.zeros((32, 32, 3), np.float32), **FAST)
    no_cond = tiny_pipeline(cond=False)
    assert no_cond(PROMPT, frames=1, **FAST).shape == (1, 3, 1, 32, 32)
    for kw in ({"image": np.zeros((32, 32, 3), np.uint8)}, {"known": torch.zeros(1, 3, 1, 32, 32)}):
        with pytest.raises(UserError, match="this model has no conditioning channels"):
            no_cond(PROMPT, **kw, **FAST)
    with pytest.raises(UserError, match="output directory does not exist"):
        pipe.generate_to_file(tmp_path / "nope" / "v.mp4", PROMPT, **FAST)


def test_request_takes_the_pipeline_defaults(pipe):
    """None fields resolve to the pipeline's defaults (tiny: 9 frames of 32x32, 4 steps, guidance 3, euler);
    given ones are kept, `frames` rounded up to the generated 4k+1."""
    r = GenerationRequest(PROMPT).resolve(pipe)
    d = pipe.defaults
    assert (r.frames, r.generated, r.height, r.width, r.steps) == (d.frames, 9, d.height, d.width, d.steps)
    assert (r.guidance, r.sampler, r.negative_prompt, r.seed, r.known) == (d.guidance, d.sampler, "", 0, None)
    assert r.plan.num_windows == 1 and r.plan.total == 3
    req = GenerationRequest(PROMPT, negative_prompt="a white background", frames=6, height=48, steps=2,
                            guidance=1.0, seed=5, sampler="ddim", window=5, overlap=1)  # fmt: skip
    r = req.resolve(pipe)
    assert (r.frames, r.generated, r.height, r.width, r.steps, r.guidance) == (6, 9, 48, 32, 2, 1.0)
    assert (r.negative_prompt, r.seed, r.sampler) == ("a white background", 5, "ddim")
    assert (r.plan.total, r.plan.window, r.plan.overlap, r.plan.num_windows) == (3, 2, 1, 2)


def test_request_and_keywords_are_one_path(pipe, tmp_path):
    req = GenerationRequest(PROMPT, frames=5, seed=3, steps=2)
    assert torch.equal(pipe(req, progress=False), pipe(PROMPT, frames=5, seed=3, **FAST))
    a = pipe.generate_to_file(tmp_path / "a.mp4", req, progress=False)
    b = pipe.generate_to_file(tmp_path / "b.mp4", PROMPT, frames=5, seed=3, **FAST)
    assert {k: v for k, v in a.items() if k not in ("path", "seconds")} == {
        k: v for k, v in b.items() if k not in ("path", "seconds")
    }


def test_request_unknown_option(pipe, tmp_path):
    with pytest.raises(
        UserError, match=r"unknown generation option 'num_frames' \(options: negative_prompt, "
    ):
        pipe(PROMPT, num_frames=9, **FAST)
    with pytest.raises(UserError, match=r"unknown generation options 'fsp', 'bogus'"):
        pipe.generate_to_file(tmp_path / "v.mp4", PROMPT, fsp=4, bogus=1, **FAST)
    with pytest.raises(UserError, match="'shift'"):
        GenerationRequest.from_options(PROMPT, shift=3.0)
    with pytest.raises(
        UserError, match=r"a GenerationRequest and the options frames: put them in the request"
    ):
        pipe(GenerationRequest(PROMPT), frames=9, progress=False)
    assert not (tmp_path / "v.mp4").exists()  # refused before the file is opened


def test_loading_errors(saved, tmp_path, monkeypatch):
    import longvideo.pipelines.folder as folder

    with monkeypatch.context() as m:
        m.setattr(folder, "ASSETS", tmp_path / "no_assets")
        with pytest.raises(UserError, match="bundled model 'shapes' is not installed in this build"):
            VideoPipeline.from_pretrained("shapes")
    with pytest.raises(UserError, match="not a bundled model"):
        VideoPipeline.from_pretrained("no-such-model")
    with pytest.raises(UserError, match=r"model_index\.json"):
        VideoPipeline.from_pretrained(tmp_path)
    # a transformer checkpoint that lacks a weight: named, not silently random
    bad = tmp_path / "bad"
    VideoPipeline.from_pretrained(saved).save_pretrained(bad)
    sd = load_file(bad / "transformer" / "model.safetensors")
    sd["extra.weight"] = sd.pop("proj_out.weight")
    save_file(sd, bad / "transformer" / "model.safetensors")
    with pytest.raises(UserError, match=r"1 missing, e\.g\. \['proj_out\.weight'\].*1 unexpected"):
        VideoPipeline.from_pretrained(bad)
