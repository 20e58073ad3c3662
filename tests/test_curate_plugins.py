"""Curation plug-ins (clear errors, py: factories, transformers folders), event stitching, chopping rules, and
a worker process that crashes on one input."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from longvideo.config import load_config
from longvideo.curate.config import CurateConfig, PluginConfig, SplitConfig
from longvideo.curate.manifest import MANIFEST, read_rows
from longvideo.curate.plugins import check_plugins, hist_embed, load_plugin, tile_2x2
from longvideo.curate.run import curate
from longvideo.curate.split import Span, chop, shots, stitch
from longvideo.curate.synthetic import Scene, write_video
from longvideo.errors import UserError

SHORT = ["split.min_seconds=1.0", "split.max_seconds=4.0", "split.min_scene_len=5"]


def _cfg(*overrides: str) -> CurateConfig:
    return load_config(CurateConfig, None, [*SHORT, *overrides])


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """Scenes A, A' (A's texture shifted: a jump cut), B, B', C: four cuts, two of them inside one event."""
    path = tmp_path_factory.mktemp("v") / "jumps.mp4"
    scenes = [
        Scene(2.0, 1, speed=1.5, angle=0),
        Scene(2.0, 1, speed=1.5, angle=0, jump=True),
        Scene(2.0, 2, speed=1.5, angle=90),
        Scene(2.0, 2, speed=1.5, angle=90, jump=True),
        Scene(2.0, 3, speed=1.5, angle=180, text="BIG TEXT HERE"),
    ]
    cuts = write_video(path, scenes, fps=10.0)
    return {"path": str(path), "cuts": cuts}


# ------------------------------------------------------------------------------------- clear errors


@pytest.mark.parametrize("step, kind", [("aesthetic", "aesthetic"), ("watermark", "watermark"),
                                        ("caption", "caption"), ("stitch", "embedder")])  # fmt: skip
def test_a_model_step_without_a_model_is_a_one_line_error(video, tmp_path, step, kind):
    with pytest.raises(UserError) as e:
        curate([video["path"]], tmp_path / "o", _cfg(f"steps=[split,{step}]"), progress=False)
    msg = str(e.value)
    assert f"step '{step}' needs a model: set plugins.{kind}=DIR" in msg and "\n" not in msg
    assert "nothing is downloaded" in msg
    assert not (tmp_path / "o").exists()  # checked before any work

    empty = tmp_path / "empty"
    empty.mkdir()
    for spec, expected in [(str(tmp_path / "nope"), "model folder not found"), (str(empty), "no config.json"),
                           ("py:nomodule_xyz:make", "cannot import")]:  # fmt: skip
        cfg = _cfg(f"steps=[split,{step}]", f"plugins.{kind}={spec}")
        with pytest.raises(UserError, match=expected):
            if spec.startswith("py:"):
                load_plugin(kind, cfg.plugins)
            else:
                check_plugins(cfg)


def test_aesthetic_folder_needs_its_head(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"aesthetic_head\.safetensors"):
        check_plugins(_cfg("steps=[aesthetic]", f"plugins.aesthetic={tmp_path}"))


# ------------------------------------------------------------------------------------------ stitching


def test_stitch_merges_jump_cuts_and_keeps_real_ones(video, tmp_path):
    # why a sensitive detector: a jump cut keeps the colours, so it is found only below the default 27;
    # stitching is what undoes the cuts that such a detector finds inside one event
    sensitive = "split.threshold=12"
    plain = curate([video["path"]], tmp_path / "plain", _cfg(sensitive), progress=False)
    assert plain["steps"]["split"]["shots"] == 5  # all four cuts
    cfg = _cfg(sensitive, "steps=[split,stitch]", "plugins.embedder=hist")
    stitched = curate([video["path"]], tmp_path / "st", cfg, progress=False)
    rows = read_rows(tmp_path / "st" / MANIFEST)
    assert stitched["steps"]["split"]["shots"] == 3
    firsts = sorted(
        {min(r["start_frame"] for r in rows if r["shot"] == s) for s in {r["shot"] for r in rows}}
    )
    assert firsts == [0, video["cuts"][1], video["cuts"][3]]  # A+A', B+B', C
    assert max(r["end"] - r["start"] for r in rows) <= 4.0  # merged events are chopped again


def test_stitch_and_hist_units():
    assert stitch([(0, 10), (10, 20), (20, 30)], {10: 0.95, 20: 0.2}, 0.9) == [(0, 20), (20, 30)]
    assert stitch([(0, 10), (10, 20)], {}, 0.9) == [(0, 10), (10, 20)]  # unmeasured cuts stay
    frames = np.random.default_rng(0).integers(0, 256, (3, 24, 32, 3), dtype=np.uint8)
    e = hist_embed(frames)
    assert e.shape == (3, 128) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert tile_2x2(frames).shape == (48, 64, 3)


# ------------------------------------------------------------------------------------------- chopping


def test_chop_equal_pieces_keyframe_snap_and_bounds():
    cfg = SplitConfig(min_seconds=3.0, max_seconds=10.0, snap_keyframes=0.25)
    fps = 10.0
    assert shots([50, 0, 300, 50], 120) == [(0, 50), (50, 120)]
    # 25 s -> three pieces of ~8.3 s, no keyframes
    spans = chop([(0, 250)], fps, cfg)
    assert sorted(s.frames for s in spans) == [83, 83, 84] and spans[0].start == 0 and spans[-1].end == 250
    # a keyframe near a chop point moves it there; a far one does not
    snapped = chop([(0, 250)], fps, cfg, keyframes=[0, 90, 200])
    assert [s.end for s in snapped] == [90, 170, 250]  # 90 is 7 frames off the ideal 83; 200 is 30 off 170
    assert all(3 * fps <= s.frames <= 10 * fps for s in snapped)
    # exactly max stays whole; just over max makes two halves that are both >= min
    assert chop([(0, 100)], fps, cfg) == [Span(0, 100, 0)]
    assert [s.frames for s in chop([(0, 101)], fps, cfg)] == [50, 51]
    # trimming frames at both ends of each shot
    trimmed = chop([(0, 40), (40, 80)], fps, SplitConfig(min_seconds=1, max_seconds=10, trim_frames=2))
    assert trimmed == [Span(2, 38, 0), Span(42, 78, 1)]


def test_config_rejects_bad_values():
    with pytest.raises(UserError, match="max_seconds must be at least 2 x min_seconds"):
        _cfg("split.max_seconds=5.0", "split.min_seconds=3.0")
    with pytest.raises(UserError, match=r"cut\.mode"):
        _cfg("cut.mode=symlink")
    cfg = _cfg("steps=[text,split,probe,text]")
    assert cfg.steps == ["probe", "split", "text"]


# ----------------------------------------------------------------------------- py: factory plug-ins

FACTORIES = """
import os
import numpy as np


def aesthetic(cfg):
    return lambda frames: float(frames.mean()) / 25.0  # brightness as a stand-in score


def watermark(cfg):
    return lambda frames: 0.1


def caption(cfg):
    return lambda frames: f"a clip of {len(frames)} sampled frames, {frames.shape[1]}x{frames.shape[2]}"


def crashing(cfg):
    def score(frames):
        if frames.shape[1] == 96:  # the one 96-pixel-high input kills its worker process
            os._exit(3)
        return 9.0
    return score
"""


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "curate_test_plugins.py").write_text(textwrap.dedent(FACTORIES))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "curate_test_plugins"


def test_python_factory_plugins_score_drop_and_caption(video, tmp_path, factories):
    cfg = _cfg(
        "steps=[split,static,motion,text,watermark,aesthetic,caption]",
        f"plugins.aesthetic=py:{factories}:aesthetic",
        f"plugins.watermark=py:{factories}:watermark",
        f"plugins.caption=py:{factories}:caption",
        "plugins.min_aesthetic=3.67",  # the two shots of A and B score ~3.5 and ~3.8
        "motion.min_flow_top5=1.0",
    )
    curate([video["path"]], tmp_path / "o", cfg, progress=False)
    rows = read_rows(tmp_path / "o" / MANIFEST)
    scored = [r for r in rows if r["aesthetic"] is not None]
    assert scored and all(r["watermark"] == 0.1 for r in scored)
    assert [r["drop_reason"] for r in rows] == ["aesthetic", None, "text"]  # the last scene has a caption bar
    for r in rows:
        assert bool(r["caption"]) == r["keep"]  # only kept clips are captioned
        if r["drop_reason"] == "aesthetic":
            assert r["aesthetic"] < 3.67
    assert (
        any(r["keep"] for r in rows)
        and "3 sampled frames, 120x160" in next(r for r in rows if r["keep"])["caption"]
    )


def test_a_worker_crash_is_reported_for_its_input_only(tmp_path, factories):
    good = tmp_path / "good.mp4"
    bad = tmp_path / "bad.mp4"
    write_video(good, [Scene(2.0, 5, speed=1.5)], fps=10.0)
    write_video(bad, [Scene(2.0, 6, speed=1.5)], fps=10.0, size=(96, 128))
    cfg = _cfg("steps=[split,aesthetic]", f"plugins.aesthetic=py:{factories}:crashing")
    summary = curate([good, bad], tmp_path / "o", cfg, workers=2, progress=False)
    errors = read_rows(tmp_path / "o" / "errors.jsonl")
    assert [(e["source"], e["stage"]) for e in errors] == [(str(bad), "worker")]
    assert summary["processed"] == 1 and summary["kept"] == 1


# ------------------------------------------------------------------------------- transformers folders


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random CLIP (+ a 3-layer aesthetic head) and a tiny ViT classifier, saved as local folders."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTForImageClassification

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    clip = CLIPModel(
        CLIPConfig(
            text_config=dict(
                small, vocab_size=64, max_position_embeddings=16, bos_token_id=0, eos_token_id=1
            ),
            vision_config=dict(small, image_size=32, patch_size=8),
            projection_dim=8,
        )
    )
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clip.save_pretrained(root / "clip")
    proc.save_pretrained(root / "clip")
    head = {"layers.0.weight": torch.randn(6, 8), "layers.0.bias": torch.randn(6),
            "layers.2.weight": torch.randn(4, 6), "layers.2.bias": torch.randn(4),
            "layers.10.weight": torch.randn(1, 4), "layers.10.bias": torch.randn(1)}  # fmt: skip
    save_file(head, str(root / "clip" / "aesthetic_head.safetensors"))
    vit = ViTForImageClassification(
        ViTConfig(**small, image_size=32, patch_size=8, num_labels=2, id2label={0: "clean", 1: "watermark"})
    )
    vit.save_pretrained(root / "vit")
    proc.save_pretrained(root / "vit")
    return {"clip": root / "clip", "vit": root / "vit", "head": head}


def test_transformers_folder_plugins(tiny_models):
    import torch

    frames = np.random.default_rng(1).integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    cfg = PluginConfig(embedder=str(tiny_models["clip"]), aesthetic=str(tiny_models["clip"]),
                       watermark=str(tiny_models["vit"]))  # fmt: skip
    emb = load_plugin("embedder", cfg)(frames)
    assert emb.shape == (3, 8) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # the head's layers apply in numeric order (layers.10 after layers.2), no activations between
    h = tiny_models["head"]
    x = torch.from_numpy(emb)
    for k in ("layers.0", "layers.2", "layers.10"):
        x = x @ h[f"{k}.weight"].T + h[f"{k}.bias"]
    assert load_plugin("aesthetic", cfg)(frames) == pytest.approx(float(x.mean()), abs=1e-5)
    p = load_plugin("watermark", cfg)(frames)
    assert 0.0 <= p <= 1.0
    with pytest.raises(UserError, match="has no label 'logo'"):
        load_plugin("watermark", PluginConfig(watermark=str(tiny_models["vit"]), watermark_label="logo"))
