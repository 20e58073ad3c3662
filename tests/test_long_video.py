"""Long videos (issue #6) on the tiny random pipeline (window 9 frames = 3 latent frames): the window plan,
exact frame counts, the first window is the plain path, later windows are conditioned on the last latents
of the one before (and the anchor), constant memory in the length, the drift measure, the CLI."""

import gc
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from longvideo.cli import main
from longvideo.data.video_io import probe, write_video
from longvideo.errors import UserError
from longvideo.eval.drift import measure_drift
from longvideo.pipelines.inputs import scale_latents
from longvideo.pipelines.tiny import tiny_pipeline
from longvideo.pipelines.video import VideoWriter
from longvideo.pipelines.windows import WindowPlan, rechunk

torch.set_num_threads(1)

PROMPT = "a large red circle moving right quickly on a black background"
FAST = dict(steps=2, guidance=1.0, progress=False)


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture
def record(pipe, monkeypatch):
    """Per window: the DiT's cond (first call of the window) and the sampled latents (the last step's x,
    scaled); and every latent chunk the VAE decodes."""
    seen = {"cond": [], "x": [], "decoded": []}
    forward, decode_chunk = pipe.transformer.forward, pipe.vae.decode_chunk

    def dit(x, t, text, text_mask=None, cond=None, pooled=None):
        if len(seen["cond"]) == len(seen["x"]):  # the first call of a new window
            seen["cond"].append(None if cond is None else cond.clone())
        return forward(x, t, text, text_mask, cond, pooled)

    def vae(z, state):
        seen["decoded"].append(z.clone())
        return decode_chunk(z, state)

    def callback(i, t, x, x0):
        if i == FAST["steps"] - 1:
            seen["x"].append(x.clone())

    monkeypatch.setattr(pipe.transformer, "forward", dit)
    monkeypatch.setattr(pipe.vae, "decode_chunk", vae)
    seen["callback"] = callback
    return seen


# ----------------------------------------------------------------------------- the plan


@pytest.mark.parametrize(
    "total, window, overlap, anchor, patch",
    [(1, 9, 2, False, 1), (9, 9, 2, False, 1), (10, 9, 2, False, 1), (257, 9, 2, True, 1), (40, 6, 1, 0, 2)],
)
def test_plan_covers_the_video_once(total, window, overlap, anchor, patch):
    plan = WindowPlan.make(total, window, overlap, bool(anchor))
    wins = list(plan.windows(patch))
    assert len(wins) == plan.num_windows
    assert sum(keep for _, _, keep in wins) == total
    assert wins[0] == (min(window, total), 0, min(window, total))
    for sampled, skip, keep in wins[1:]:
        assert skip == overlap + anchor and 1 <= keep <= sampled - skip <= window - skip
        assert sampled % patch == 0


def test_plan_errors():
    with pytest.raises(UserError, match="overlap 3 must be less than the window's 3 latent frames"):
        WindowPlan.make(10, 3, 3)
    with pytest.raises(UserError, match=r"overlap 2 \+ the anchor frame"):
        WindowPlan.make(10, 3, 2, anchor=True)
    with pytest.raises(UserError, match="cond_noise must be in"):
        WindowPlan.make(10, 3, 1, cond_noise=1.0)
    assert WindowPlan.make(10, 3, anchor=True).overlap == 1  # the default fits the window
    assert [z.shape[2] for z in rechunk([torch.zeros(1, 1, n, 1, 1) for n in (3, 1, 1, 5)], 4)] == [4, 4, 2]


# ----------------------------------------------------------------------------- generation


@pytest.mark.parametrize("frames", [1, 10, 13, 26, 38])
def test_exactly_the_frames_asked_for(pipe, frames):
    assert pipe(PROMPT, frames=frames, **FAST).shape == (1, 3, frames, 32, 32)


def test_a_window_sized_request_is_the_plain_path(pipe, record):
    plain = pipe(PROMPT, frames=9, seed=5, decode_chunk=1, **FAST)
    assert len(record["cond"]) == 1  # one window
    assert torch.equal(pipe(PROMPT, frames=9, window=9, seed=5, decode_chunk=1, **FAST), plain)
    assert torch.equal(pipe(PROMPT, frames=9, window=33, seed=5, decode_chunk=1, **FAST), plain)
    # a long video starts with the short one: its first window is the plain path, and decoding is causal
    long = pipe(PROMPT, frames=25, seed=5, decode_chunk=1, **FAST)
    assert torch.equal(long[:, :, :9], plain) and not torch.equal(long[:, :, 9:18], plain)


def test_defaults_window_sets_the_window(pipe, record, monkeypatch):
    """A post-tuned model ships `defaults.window` (longer than its default length): requests up to it are
    one window, longer ones are windows of that size."""
    monkeypatch.setattr(pipe.defaults, "window", 17)
    pipe(PROMPT, frames=17, callback=record["callback"], **FAST)
    assert len(record["cond"]) == 1
    pipe(PROMPT, frames=25, callback=record["callback"], **FAST)  # 7 latent frames: windows of 5 and 5
    assert len(record["cond"]) == 3 and record["cond"][2][:, -1, :2].eq(1).all()  # continues from 2
    monkeypatch.setattr(pipe.defaults, "window", -1)
    with pytest.raises(UserError, match="window"):
        pipe.defaults.validate()


@pytest.mark.parametrize("anchor", [False, True])
def test_each_window_continues_from_the_last(pipe, record, anchor):
    c = pipe.vae.cfg.latent_channels
    overlap = 1 if anchor else 2
    pipe(PROMPT, frames=25, overlap=overlap, anchor=anchor, callback=record["callback"], **FAST)
    conds, xs = record["cond"], record["x"]
    carried = overlap + anchor
    assert len(conds) == len(xs) == 1 + (7 - 3) // (3 - carried)  # 25 frames = 7 latent frames
    assert torch.equal(conds[0], torch.zeros_like(conds[0]))  # T2V: nothing known in the first window
    for k in range(1, len(xs)):
        cond, prev = conds[k], xs[k - 1]
        assert torch.equal(cond[:, c, :carried], torch.ones(1, carried, 4, 4))
        assert torch.equal(cond[:, :, carried:], torch.zeros_like(cond[:, :, carried:]))
        assert torch.equal(cond[:, :c, anchor:carried], prev[:, :, -overlap:])
        if anchor:
            assert torch.equal(cond[:, :c, :1], xs[0][:, :, :1])
    # only the new latent frames are appended: the decoder sees window 0, then each window after its known
    new = [xs[0]] + [x[:, :, carried:] for x in xs[1:]]
    want = torch.cat(new, dim=2)[:, :, :7]
    got = scale_latents(torch.cat(record["decoded"], dim=2), pipe.vae.cfg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_image_starts_a_long_video_and_cond_noise(pipe, record):
    c = pipe.vae.cfg.latent_channels
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    kw = dict(image=img, frames=21, anchor=True, callback=record["callback"], **FAST)
    pipe(PROMPT, **kw)
    clean_conds, clean_xs = record["cond"][:], record["x"][:]
    with torch.no_grad():
        image_latent = scale_latents(pipe.vae.encode(img[None, :, None]).mode(), pipe.vae.cfg)
    torch.testing.assert_close(clean_conds[0][:, :c, :1], image_latent, rtol=1e-5, atol=1e-5)
    assert torch.equal(clean_conds[1][:, :c, :1], clean_xs[0][:, :, :1])  # the anchor: the image's frame
    # cond_noise = t moves every known frame to (1 - t) z + t eps (flow), fresh eps per window
    t = 0.2
    record["cond"].clear(), record["x"].clear()
    pipe(PROMPT, cond_noise=t, **kw)
    noisy = record["cond"][0][:, :c, :1]
    eps = (noisy - (1 - t) * image_latent) / t
    assert not torch.equal(noisy, clean_conds[0][:, :c, :1]) and 0.5 < eps.std() < 1.5
    assert torch.equal(record["cond"][0][:, c], clean_conds[0][:, c])  # the mask is unchanged


def test_errors(pipe):
    with pytest.raises(UserError, match=r"clip \(13 frames\) is longer than the window \(9 frames\)"):
        pipe(PROMPT, known=torch.zeros(1, 3, 13, 32, 32), frames=30, **FAST)
    with pytest.raises(UserError, match="window must be an integer >= 1"):
        pipe(PROMPT, window=0, **FAST)
    no_cond = tiny_pipeline(cond=False)
    with pytest.raises(UserError, match="no conditioning channels: it cannot continue a window"):
        no_cond(PROMPT, frames=20, **FAST)
    assert no_cond(PROMPT, frames=20, overlap=0, **FAST).shape[2] == 20  # independent windows


def _live_tensor_bytes() -> int:
    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]  # type(): no lazy lookups
    return sum(t.untyped_storage().nbytes() for t in tensors)


def test_memory_does_not_grow_with_length(pipe, tmp_path, monkeypatch):
    """Live tensors while frames are written, and the decoder's stream state, for 41 and 161 frames
    (9 and 39 windows): the same, so nothing proportional to the length is kept."""
    write, decode_chunk = VideoWriter.write, pipe.vae.decode_chunk
    live, state = [], []

    def spy_write(self, frame):
        live.append(_live_tensor_bytes())
        write(self, frame)

    def spy_decode(z, s):
        state.append(s.nbytes())
        return decode_chunk(z, s)

    monkeypatch.setattr(VideoWriter, "write", spy_write)
    monkeypatch.setattr(pipe.vae, "decode_chunk", spy_decode)
    peaks, states = [], []
    for frames in (41, 161):
        live.clear(), state.clear()
        summary = pipe.generate_to_file(tmp_path / f"{frames}.mp4", PROMPT, frames=frames, steps=1,
                                        guidance=1.0, progress=False, decode_chunk=2)  # fmt: skip
        assert summary["frames"] == frames and summary["windows"] == (frames - 1) // 4 - 1
        peaks.append(max(live))
        states.append(set(state[1:]))
    assert peaks[0] == peaks[1], peaks
    assert states[0] == states[1] and len(states[0]) == 1  # one stream-state size after the first chunk


# ----------------------------------------------------------------------------- drift


def _scene(levels, t=20, size=32):
    """A square moving right over a grey background whose level goes through `levels` (start -> end)."""
    video = np.empty((t, size, size, 3), np.uint8)
    for i, v in enumerate(np.linspace(*levels, t)):
        video[i] = round(v)
        video[i, 10:18, 2 + i : 10 + i] = (220, 40, 40)
    return video


def test_drift_of_a_constant_background_is_zero(tmp_path):
    report = measure_drift(_scene((100, 100)))
    s = report.summary()
    assert report.background_drift == 0 and s["brightness_change"] == 0 and s["frames"] == 20
    assert np.allclose(report.background, 100) and 0.9 < report.background_fraction.min() < 1
    assert s["sharpness_ratio"] == 1.0  # the square's edges, the same in every frame


def test_drift_of_a_brightening_background():
    report = measure_drift(_scene((100, 120)))
    assert report.background_drift == pytest.approx(20 / 255, abs=1e-9)
    assert report.summary()["background_drift_levels"] == pytest.approx(20)
    assert report.summary()["background_colour_change_max_levels"] == pytest.approx(20)
    assert 0 < report.summary()["brightness_change"] < 20  # the square does not brighten
    assert measure_drift(_scene((100, 120)), ends=3).background_drift < 20 / 255  # ends averaged


def test_drift_from_a_file_and_blur(tmp_path):
    path = tmp_path / "v.mp4"
    write_video(path, _scene((100, 120)), fps=8)
    assert abs(measure_drift(path).background_drift * 255 - 20) < 1.5  # H.264 round trip
    sharp = np.zeros((2, 32, 32, 3), np.uint8)
    sharp[:, ::2, ::2] = 255  # fine detail, then blurred away in the last frame
    sharp[1] = 64
    assert measure_drift(sharp).summary()["sharpness_ratio"] == 0
    with pytest.raises(UserError, match="uint8"):
        measure_drift(np.zeros((2, 8, 8, 3), np.float32))


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "tiny"
    pipe.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--frames", "0"], "argument --frames: must be >= 1, got 0"),
        (["--frames", "x"], "argument --frames: expected an integer"),
        (["--window", "0"], "argument --window: must be >= 1"),
        (["--overlap", "-1"], "argument --overlap: must be >= 0"),
        (["--frames", "100", "--window", "9", "--overlap", "3"], "overlap 3 must be less than the window's"),
        (["--frames", "100", "--overlap", "9"], "overlap 9 must be less than the window's 3 latent frames"),
        (["--cond-noise", "1"], "cond_noise must be in [0, 1)"),
    ],
)
def test_cli_bad_values(folder, tmp_path, capsys, args, needle):
    code = main(["generate", PROMPT, "--model", folder, "-o", str(tmp_path / "v.mp4"), *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("longvideo: error: ") and needle in lines[0]


def test_cli_long_video(folder, tmp_path, capsys):
    out = tmp_path / "long.mp4"
    argv = ["generate", PROMPT, "--model", folder, "--frames", "30", "--steps", "1", "--anchor"]
    assert main([*argv, "-o", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert '"frames": 30' in summary and '"windows": 7' in summary
    assert probe(out).num_frames == 30
