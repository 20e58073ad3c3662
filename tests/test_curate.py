"""Curation on a generated corpus with known ground truth (issue #7's bars).

The corpus: 160x120 videos at 10 fps (one at 24 fps, one MPEG-4 in Matroska) made of scenes joined by hard
cuts at known frames; each scene is static, slow (0.2 px/frame), normal (1-2 px/frame) or fast (6 px/frame),
some with a caption burned in; plus broken inputs. One curation run is shared by the tests; they measure
cut precision/recall and the static/motion/text decision accuracies against the bars, check the broken files
are all reported, that reruns (also after a simulated crash) add nothing, and that shards merge to the
unsharded result.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from longvideo.cli import main
from longvideo.config import load_config
from longvideo.curate.config import CurateConfig
from longvideo.curate.manifest import MANIFEST, ROW_FIELDS, merge, read_rows
from longvideo.curate.run import curate, parse_shard
from longvideo.curate.synthetic import Scene, cut_frames, write_video
from longvideo.data.video_io import read_video
from longvideo.errors import UserError

FPS = 10.0
SPEED = {"static": 0.0, "slow": 0.2, "normal": 1.5, "fast": 6.0}
# (class, seconds, text) per scene; a row of scenes is one video
PLAN = [
    [("normal", 3, False), ("static", 2.5, False), ("fast", 3, True), ("slow", 3, False)],
    [("static", 3, True), ("normal", 2.5, True), ("slow", 3, False), ("fast", 2.5, False)],
    [("fast", 2.5, False), ("slow", 3, False), ("normal", 6, False), ("static", 2.5, False)],
    [("slow", 2.5, False), ("fast", 3, True), ("static", 3, False), ("normal", 3, True)],
    [("normal", 3, True), ("fast", 2.5, False), ("normal", 2.5, False), ("slow", 3, False)],
    [("static", 2.5, False), ("slow", 3, False), ("fast", 3, False), ("normal", 2.5, True)],
    [("fast", 3, True), ("normal", 3, False), ("static", 2.5, True), ("fast", 2.5, False)],
]
TEXTS = ["BREAKING NEWS", "SALE 50 OFF", "LIVE AT NINE", "HELLO WORLD"]


def _config() -> CurateConfig:
    """Clip rules scaled to the short test scenes; thresholds between the corpus' classes."""
    cfg = load_config(
        CurateConfig,
        None,
        [
            "split.min_seconds=1.0",
            "split.max_seconds=4.0",
            "split.min_scene_len=5",
            "motion.min_flow_top5=1.4",  # slow ~0.8, normal >= 2.2 (px/frame at 256 px)
            "motion.max_flow_mean=5.5",  # normal <= 3.5, fast >= 7 (a text bar lowers the mean)
            "sample_frames=2",
            "score_all=true",  # every clip gets every score, so each decision can be measured
        ],
    )
    return cfg


def _scenes(v: int, plan) -> list[Scene]:
    return [
        Scene(
            sec,
            seed=100 * v + k,
            speed=SPEED[cls],
            angle=47.0 * k + 29 * v,
            text=TEXTS[(v + k) % 4] if txt else None,
        )
        for k, (cls, sec, txt) in enumerate(plan)
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    truth: dict[str, dict] = {}

    def add(name, plan, fps=FPS, v=0, **kw):
        scenes = _scenes(v, plan)
        path = d / name
        write_video(path, scenes, fps=fps, **kw)
        truth[str(path)] = {"fps": fps, "scenes": scenes, "plan": plan, "cuts": cut_frames(scenes, fps)}

    for v, plan in enumerate(PLAN):
        add(f"v{v}.mp4", plan, v=v)
    add("v24fps.mp4", [("normal", 2, False), ("fast", 2, True), ("static", 2, False)], fps=24.0, v=7)
    # an odd codec in another container: MPEG-4 part 2 in Matroska (no frame count in the header)
    add("mpeg4.mkv", [("normal", 3, False), ("fast", 3, True)], v=8, codec="mpeg4")

    broken = {}
    (d / "random.mp4").write_bytes(
        np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    )
    (d / "empty.mp4").write_bytes(b"")
    (d / "notes.txt").write_text("not a video\n")
    good = (d / "v0.mp4").read_bytes()
    (d / "truncated.mp4").write_bytes(good[: len(good) * 2 // 3])  # moov is at the end: unreadable
    write_video(d / "whole.mkv", _scenes(9, [("normal", 4, False), ("fast", 4, False)]), fps=FPS)
    mkv = (d / "whole.mkv").read_bytes()
    (d / "truncated.mkv").write_bytes(mkv[: len(mkv) // 2])  # readable head, half the frames missing
    (d / "whole.mkv").unlink()
    _audio_only(d / "audio.m4a")
    for name in ("random.mp4", "empty.mp4", "notes.txt", "truncated.mp4", "truncated.mkv", "audio.m4a"):
        broken[str(d / name)] = name
    broken[str(d / "missing.mp4")] = "missing.mp4"  # never created
    inputs = sorted(truth) + sorted(broken)
    return {"dir": d, "truth": truth, "broken": broken, "inputs": inputs}


def _audio_only(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        t = np.linspace(0, 1, 16000, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(
            (0.1 * np.sin(2 * np.pi * 440 * t))[None], format="flt", layout="mono"
        )
        frame.sample_rate = 16000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = curate(corpus["inputs"], out, _config(), progress=False)
    rows = read_rows(out / MANIFEST)
    errors = read_rows(out / "errors.jsonl")
    return {"out": out, "summary": summary, "rows": rows, "errors": errors}


def _label(truth: dict, row: dict) -> tuple[str, bool]:
    """(motion class, has text) of the scene under the clip's middle frame."""
    mid = (row["start_frame"] + row["end_frame"]) // 2
    k = int(np.searchsorted(truth["cuts"], mid, side="right"))
    cls, _, _ = truth["plan"][k]
    return cls, truth["scenes"][k].text is not None


# ------------------------------------------------------------------------------------------------ bars


def test_cut_detection_precision_recall(corpus, run):
    tp = fp = fn = 0
    for source, truth in corpus["truth"].items():
        rows = sorted((r for r in run["rows"] if r["source"] == source), key=lambda r: r["clip"])
        found = [r["start_frame"] for a, r in itertools.pairwise(rows) if r["shot"] != a["shot"]]
        gt = list(truth["cuts"])
        for c in found:
            hit = next((g for g in gt if abs(g - c) <= 1), None)
            if hit is None:
                fp += 1
            else:
                tp += 1
                gt.remove(hit)
        fn += len(gt)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    print(f"cuts: {tp + fn} true, precision {precision:.3f}, recall {recall:.3f}")
    assert tp + fn >= 24
    assert precision >= 0.95 and recall >= 0.95


def test_static_motion_text_decisions(corpus, run):
    cfg = _config()
    static_ok, motion_ok, text_ok, n_motion = [], [], [], 0
    for r in run["rows"]:
        cls, has_text = _label(corpus["truth"][r["source"]], r)
        static_ok.append((r["static_ratio"] > cfg.static.max_static_ratio) == (cls == "static"))
        text_ok.append((r["text_area"] > cfg.text.max_area) == has_text)
        if cls != "static":  # motion classes among the moving clips
            predicted = (
                "slow"
                if r["flow_top5"] < cfg.motion.min_flow_top5
                else "fast"
                if r["flow_mean"] > cfg.motion.max_flow_mean
                else "normal"
            )
            motion_ok.append(predicted == cls)
            n_motion += 1
    acc = {k: float(np.mean(v)) for k, v in [("static", static_ok), ("motion", motion_ok), ("text", text_ok)]}
    print(f"decision accuracy over {len(run['rows'])} clips ({n_motion} moving): {acc}")
    assert len(run["rows"]) >= 30
    assert all(a >= 0.95 for a in acc.values()), acc
    # the drop reasons follow the decisions, first reason wins
    reasons = {r["drop_reason"] for r in run["rows"]}
    assert {"static", "low_motion", "high_motion", "text"} <= reasons


def test_every_broken_input_is_reported_once(corpus, run):
    by_source = {}
    for e in run["errors"]:
        assert set(e) == {"source", "stage", "reason"} and e["reason"] and "\n" not in e["reason"]
        assert e["source"] not in by_source
        by_source[e["source"]] = e
    assert set(by_source) == set(corpus["broken"]), sorted(Path(s).name for s in by_source)
    assert by_source[str(corpus["dir"] / "truncated.mkv")]["stage"] in ("probe", "decode")
    assert "no video stream" in by_source[str(corpus["dir"] / "audio.m4a")]["reason"]
    assert {r["source"] for r in run["rows"]} == set(corpus["truth"])  # the MPEG-4 .mkv included
    s = run["summary"]
    assert s["errors"] == len(corpus["broken"]) and s["processed"] == len(corpus["truth"])
    assert sum(s["drop_reasons"].values()) == s["clips"] - s["kept"]


def test_manifest_rows_and_clip_files(corpus, run):
    out = run["out"]
    modes = set()
    for r in run["rows"]:
        assert tuple(r) == ROW_FIELDS
        assert (r["path"] is not None) == r["keep"]
        assert r["end"] - r["start"] <= 4.0 + 1e-6
        if not r["keep"]:
            continue
        modes.add(r["cut"])
        clip = read_video(out / r["path"])  # (T, H, W, 3)
        assert clip.shape == (r["num_frames"], r["height"], r["width"], 3)
        assert r["num_frames"] == r["end_frame"] - r["start_frame"]
        assert r["drop_reason"] is None and r["caption"] == ""
    assert modes == {"copy", "reencode"}  # cuts on keyframes are copied, chop points re-encoded
    # a stream copy from the middle of a file is lossless: exactly the source's frames
    copied = next(r for r in run["rows"] if r["cut"] == "copy" and r["start_frame"] > 0)
    source = read_video(copied["source"])[copied["start_frame"] : copied["end_frame"]]
    assert np.array_equal(read_video(out / copied["path"]), source)
    # the frames of a clip are the source's frames [start_frame, end_frame), not shifted by one
    fast = next(r for r in run["rows"] if r["keep"] and r["cut"] == "reencode" and r["flow_mean"] > 2)
    clip = read_video(out / fast["path"]).astype(np.float32)
    src = read_video(fast["source"]).astype(np.float32)
    s, e = fast["start_frame"], fast["end_frame"]
    aligned = np.abs(clip - src[s:e]).mean()
    assert aligned < 3 and aligned < 0.5 * np.abs(clip[1:] - src[s : e - 1]).mean()


def test_rerun_is_idempotent_and_resumes_after_a_crash(corpus, run, tmp_path):
    out = run["out"]
    before = (out / MANIFEST).read_bytes()
    errors_before = (out / "errors.jsonl").read_bytes()
    again = curate(corpus["inputs"], out, _config(), progress=False)
    assert again["this_run"]["inputs"] == 0 and again["this_run"]["skipped_done"] == len(corpus["inputs"])
    assert (out / MANIFEST).read_bytes() == before and (out / "errors.jsonl").read_bytes() == errors_before

    # a crash: two inputs' rows and one error never written, the last row torn mid-line
    crashed = tmp_path / "crashed"
    shutil.copytree(out, crashed)
    lost = sorted(corpus["truth"])[:2]
    lines = [ln for ln in before.decode().splitlines(keepends=True) if json.loads(ln)["source"] not in lost]
    (crashed / MANIFEST).write_text("".join(lines) + lines[0][:40])
    err_lines = errors_before.decode().splitlines(keepends=True)
    (crashed / "errors.jsonl").write_text("".join(err_lines[1:]))
    for r in run["rows"]:
        if r["source"] in lost and r["path"]:
            (crashed / r["path"]).unlink()
    resumed = curate(corpus["inputs"], crashed, _config(), progress=False)
    assert resumed["this_run"]["inputs"] == 3
    assert (crashed / MANIFEST).read_bytes() == before
    assert (crashed / "errors.jsonl").read_bytes() == errors_before


def test_shards_merge_to_the_unsharded_run(corpus, run, tmp_path):
    assert parse_shard("1/2") == (1, 2)
    with pytest.raises(UserError):
        parse_shard("2/2")
    shard_dirs = [tmp_path / "s0", tmp_path / "s1"]
    for i, d in enumerate(shard_dirs):
        # shard 1 runs two worker processes: the pool path gives the same rows as the inline one
        curate(corpus["inputs"], d, _config(), workers=1 + i, shard=(i, 2), progress=False)
    a, b = (read_rows(d / MANIFEST) for d in shard_dirs)
    assert a and b and not {r["source"] for r in a} & {r["source"] for r in b}
    merged = tmp_path / "merged"
    summary = merge(shard_dirs, merged)
    assert summary["clips"] == run["summary"]["clips"] and summary["errors"] == run["summary"]["errors"]

    def strip(rows):
        return [{**r, "path": Path(r["path"]).name if r["path"] else None} for r in rows]

    merged_rows = read_rows(merged / MANIFEST)
    assert strip(merged_rows) == strip(run["rows"])
    assert read_rows(merged / "errors.jsonl") == run["errors"]
    for r in merged_rows:
        if r["path"]:
            assert (merged / r["path"]).is_file()  # rewritten relative to the merged folder


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_curate_and_merge(corpus, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("split:\n  min_seconds: 1.0\n  max_seconds: 4.0\n  min_scene_len: 5\n")
    video = str(corpus["dir"] / "v0.mp4")
    out = tmp_path / "o"
    args = ["curate", video, str(corpus["dir"] / "notes.txt"), "-o", str(out), "--config", str(cfg)]
    args += ["--set", "motion.min_flow_top5=1.4", "--steps", "split,static,motion", "--no-progress"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["processed"] == 1 and summary["errors"] == 1 and summary["clips"] >= 4
    assert summary["drop_reasons"].get("static", 0) >= 1
    rows = read_rows(out / MANIFEST)
    assert all(r["text_area"] is None for r in rows)  # the text step was not asked for
    # a rerun with other settings into the same folder is refused, not mixed
    assert main([*args[:-2], "split", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["curate", "--merge", str(out), "-o", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["clips"] == summary["clips"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--shard", "3/2"], "--shard must be i/n"),
        (["--steps", "split,colour"], "unknown step(s) colour"),
        (["--steps", "aesthetic"], "step 'aesthetic' needs a model: set plugins.aesthetic=DIR"),
        (["--set", "split.detector=magic"], "split.detector must be"),
        (["--workers", "0"], "--workers must be >= 1"),
    ],
)
def test_cli_bad_input_is_one_line(corpus, tmp_path, capsys, args, message):
    video = str(corpus["dir"] / "v0.mp4")
    assert main(["curate", video, "-o", str(tmp_path / "o"), "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("longvideo: error: ") and err.count("\n") == 1 and message in err, err


def test_reencoded_clips_are_byte_identical_across_runs(corpus, tmp_path):
    """The same input and settings give the same clip files (x264 pinned, #21)."""
    cfg = _config()
    cfg.steps, cfg.cut.mode = ["probe", "split"], "reencode"
    video = str(corpus["dir"] / "v0.mp4")
    for name in ("a", "b"):
        curate([video], tmp_path / name, cfg, progress=False)

    def clips(out: Path) -> dict:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "clips").rglob("*.mp4"))}

    assert len(clips(tmp_path / "a")) >= 3 and clips(tmp_path / "a") == clips(tmp_path / "b")
    assert (tmp_path / "a" / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
