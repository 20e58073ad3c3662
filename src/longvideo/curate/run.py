"""The curation runner: inputs -> worker processes -> OUT/manifest.jsonl + OUT/errors.jsonl + a summary.

Per input (`process_input`, in a worker): probe -> one analysis decode (shots, static, motion, stitching
embeddings) -> spans (split.py) -> static/motion decisions -> OCR and model plug-ins on a few sampled frames
of the clips still kept -> clip files. Any failure of an input becomes one errors.jsonl row naming the stage;
the run goes on. A worker process that dies (a decoder crash) breaks the pool: its in-flight inputs are rerun
one at a time in fresh processes, and the one that kills its process again is reported.

`--shard i/n` takes every n-th input of the sorted input list starting at i (every machine must be given
the same list); `manifest.merge` joins the shard folders.

Outputs and processes: OUT is refused when it is, holds or sits inside an input, or holds another
command's outputs; workers die with the runner (also when it is killed), a Ctrl-C or SIGTERM stops them at
once (their temp clips removed), and temp files a killed run left in OUT are swept by the next run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from longvideo.curate import manifest as mf
from longvideo.curate.analyse import analyse
from longvideo.curate.config import CurateConfig
from longvideo.curate.cut import clip_relpath, write_clip
from longvideo.curate.filters import TextMeter, clip_scores, decide_static_motion, decide_text
from longvideo.curate.plugins import check_plugins, load_plugin
from longvideo.curate.probe import SourceInfo, probe_source
from longvideo.curate.split import Span, chop, is_too_short, shots, stitch
from longvideo.data.video_io import iter_frames
from longvideo.errors import UserError
from longvideo.outputs import check_folder_for, folder_lock, stop_pool, sweep_temps, worker_init, worker_task

_log = logging.getLogger(__name__)
FORMAT = 1  # of the output folder; part of curate.json


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n)."""
    i, sep, n = text.partition("/")
    try:
        pair = (int(i), int(n))
    except ValueError:
        pair = (-1, 0)
    if not sep or not 0 <= pair[0] < pair[1]:
        raise UserError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return pair


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], extensions: Sequence[str]) -> list[str]:
    """Absolute paths, sorted, without repeats. Folders are searched recursively for the video extensions;
    files given by name are taken whatever they are (a non-video becomes an errors.jsonl row)."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found: set[str] = set()
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found.update(
                    os.path.join(root, f)
                    for f in files
                    if not f.startswith(".") and Path(f).suffix.lower() in exts
                )
        else:
            found.add(str(p))
    return sorted(os.path.abspath(f) for f in found)


def curate(
    inputs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    cfg: CurateConfig | None = None,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    retry_errors: bool = False,
) -> dict:
    """Curate `inputs` into the folder `out` (resuming whatever is there). Returns the summary.

    `retry_errors` processes again the inputs of this shard that are in errors.jsonl (after fixing them)."""
    cfg = (cfg or CurateConfig()).validate()
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    check_plugins(cfg)
    sources = expand_inputs(inputs, cfg.extensions)
    if not sources:
        raise UserError("no inputs: give video files or folders holding videos")
    i, n = shard
    mine = sources[i::n]
    out = Path(out)
    check_apart(inputs, out)
    check_folder_for(out, mf.STAMP, "curate")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {out}: {e.strerror or e}") from None
    t0 = time.perf_counter()
    with folder_lock(out, "curate run"):  # two would interleave their final sorted rewrites
        mf.check_stamp(out, {"format": FORMAT, "config": dataclasses.asdict(cfg)})
        sweep_temps(out, recursive=True)  # what a killed run left (under the lock: no live run's files)
        if retry_errors:
            chosen = set(mine)
            errors = mf.read_rows(out / mf.ERRORS, repair=True)
            mf.write_sorted(out / mf.ERRORS, [e for e in errors if e["source"] not in chosen])
        done = mf.done_sources(out)
        todo = [s for s in mine if s not in done]
        stats = {"inputs": 0, "clips": 0, "kept": 0, "errors": 0}
        # why closing: an exception here (SIGTERM, Ctrl-C) stops the workers now, not when the traceback
        # is freed; the bar's with-block closes it before the error is printed
        with (
            tqdm(total=len(mine), initial=len(mine) - len(todo), desc="curate", unit="video",
                 disable=not progress) as bar,
            contextlib.closing(_results(todo, cfg, out, workers)) as results,
        ):  # fmt: skip
            for rows, error in results:
                if error is not None:
                    mf.append_rows(out / mf.ERRORS, [error])
                    stats["errors"] += 1
                else:
                    mf.append_rows(out / mf.MANIFEST, rows)
                    stats["clips"] += len(rows)
                    stats["kept"] += sum(bool(r["keep"]) for r in rows)
                stats["inputs"] += 1
                bar.update()
                bar.set_postfix(
                    clips=stats["clips"], kept=stats["kept"], errors=stats["errors"], refresh=False
                )
        for name in (mf.MANIFEST, mf.ERRORS):
            mf.write_sorted(out / name, mf.read_rows(out / name, repair=True))
    seconds = time.perf_counter() - t0
    run = stats | {
        "skipped_done": len(mine) - len(todo),
        "seconds": round(seconds, 2),
        "inputs_per_hour": round(stats["inputs"] / seconds * 3600, 1) if stats["inputs"] else None,
        "clips_per_hour": round(stats["clips"] / seconds * 3600, 1) if stats["clips"] else None,
        "workers": workers,
        "shard": f"{i}/{n}",
    }
    return mf.summarize(out, {"this_run": run})


def check_apart(inputs: Sequence[str | os.PathLike[str]], out: Path) -> None:
    """UserError when the output folder is an input, or inside an input folder (its clips would be inputs
    of the next run), or holds an input (clips written over what is being read)."""
    o = os.path.realpath(out)
    for item in inputs:
        r = os.path.realpath(item)
        if r == o or o.startswith(r + os.sep):
            raise UserError(f"curate: the output folder {out} is inside the input {item}; write it elsewhere")
        if r.startswith(o + os.sep):
            raise UserError(f"curate: the input {item} is inside the output folder {out}; write it elsewhere")


# ------------------------------------------------------------------------------------------- workers


def _results(
    todo: list[str], cfg: CurateConfig, out: Path, workers: int
) -> Iterator[tuple[list, dict | None]]:
    if workers == 1 or len(todo) <= 1:
        for source in todo:
            yield process_input(source, cfg, str(out))
        return
    pending = deque(todo)
    while pending:
        suspects: list[str] = []
        with _pool(workers) as pool:
            inflight: dict = {}
            try:
                yield from _drain(pool, pending, inflight, suspects, cfg, out, workers)
            except BaseException:  # why: Ctrl-C, SIGTERM or a fatal error: stop the workers now
                stop_pool(pool)
                raise
        for s in suspects:
            yield _isolated(s, cfg, out)


def _drain(pool, pending: deque, inflight: dict, suspects: list, cfg: CurateConfig, out: Path, workers: int):
    """Feed `pool` (at most 2 inputs per worker in flight) until done or broken (then `suspects` is set)."""
    while pending or inflight:
        while pending and len(inflight) < 2 * workers:
            s = pending.popleft()
            inflight[pool.submit(_process_in_worker, s, cfg, str(out))] = s
        finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
        for f in finished:
            s = inflight.pop(f)
            try:
                yield f.result()
            except BrokenProcessPool:
                suspects.append(s)
        if suspects:  # the pool is dead: every in-flight input is a suspect
            suspects += inflight.values()
            inflight.clear()
            return


def _isolated(source: str, cfg: CurateConfig, out: Path) -> tuple[list, dict | None]:
    """Rerun one input alone in a fresh process: a second crash is this input's fault."""
    with _pool(1) as pool:
        try:
            return pool.submit(_process_in_worker, source, cfg, str(out)).result()
        except BrokenProcessPool:
            return [], {"source": source, "stage": "worker", "reason": "the worker process crashed"}
        except BaseException:
            stop_pool(pool)
            raise


def _pool(workers: int) -> ProcessPoolExecutor:
    ctx = get_context("spawn")  # why: no fork of a parent holding torch/ORT/OpenCV thread pools
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),))


def _process_in_worker(source: str, cfg: CurateConfig, out: str) -> tuple[list[dict], dict | None]:
    with worker_task():  # a SIGTERM from stop_pool: the clip's temp file is removed, then the worker exits
        return process_input(source, cfg, out)


def _init_worker(parent: int) -> None:
    worker_init(parent)  # dies with the runner

    import cv2
    import torch

    # why: the runner parallelises over inputs; a thread pool per library per process would oversubscribe
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


class _Tools:
    """Models a worker loads once and reuses across inputs (OCR engine, plug-ins)."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self._text: TextMeter | None = None
        self._plugins: dict[str, object] = {}

    def text(self) -> TextMeter:
        if self._text is None:
            self._text = _load_tool("text", lambda: TextMeter(self.cfg.text))
        return self._text

    def plugin(self, kind: str):
        if kind not in self._plugins:
            self._plugins[kind] = _load_tool(kind, lambda: load_plugin(kind, self.cfg.plugins))
        return self._plugins[kind]


class ToolLoadError(UserError):
    """A model or engine failed to load: the configuration is wrong for every input, so the run stops
    (recording it per input would mark every input done-with-error)."""


def _load_tool(kind: str, build):
    try:
        return build()
    except Exception as e:
        raise ToolLoadError(f"cannot load the {kind} model: {_one_line(e)}") from e


_TOOLS: dict[str, _Tools] = {}  # per process, by config


def _tools(cfg: CurateConfig) -> _Tools:
    key = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    if key not in _TOOLS:
        _TOOLS.clear()
        _TOOLS[key] = _Tools(cfg)
    return _TOOLS[key]


# ------------------------------------------------------------------------------------------ one input


def process_input(source: str, cfg: CurateConfig, out: str) -> tuple[list[dict], dict | None]:
    """All steps for one input -> (manifest rows, None) or ([], error row). Never raises for bad input."""
    stage = "probe"
    try:
        tools = _tools(cfg)
        src = probe_source(source)
        fps = src.info.fps
        stage = "decode"
        an = None
        if any(cfg.has(s) for s in ("split", "static", "motion")):
            an = analyse(source, src, cfg, tools.plugin("embedder") if cfg.has("stitch") else None)
        num_frames = an.num_frames if an is not None else src.info.num_frames
        stage = "split"
        if cfg.has("split"):
            spans_ = shots(an.cuts, num_frames)
            if cfg.has("stitch"):
                spans_ = stitch(spans_, an.cut_similarity, cfg.plugins.stitch_similarity)
            spans = chop(spans_, fps, cfg.split, src.keyframes)
        else:
            spans = [Span(0, num_frames, 0)]
        rows = [
            _base_row(source, src, j, span, fps, whole=not cfg.has("split")) for j, span in enumerate(spans)
        ]
        for row, span in zip(rows, spans, strict=True):
            if cfg.has("split") and is_too_short(span, fps, cfg.split):
                _drop(row, "too_short")
            if an is not None:
                stage = "static"
                row.update(
                    clip_scores(an.pairs, an.diff, an.flow_mean, an.flow_top5, span.start, span.end, cfg)
                )
                if row["keep"] or cfg.score_all:
                    _drop(row, decide_static_motion(row, cfg))
        stage = "text"
        _score_samples(source, src, spans, rows, cfg, tools)
        stage = "cut"
        _write_clips(source, src, spans, rows, num_frames, Path(out), cfg)
        return rows, None
    except (KeyboardInterrupt, SystemExit, ToolLoadError):
        raise
    except BaseException as e:  # why: one bad input never stops the run; MemoryError included
        stage = getattr(e, "curate_stage", stage)
        return [], {"source": source, "stage": stage, "reason": _one_line(e)}


def _base_row(source: str, src: SourceInfo, j: int, span: Span, fps: float, whole: bool) -> dict:
    row = dict.fromkeys(mf.ROW_FIELDS)
    row.update(
        path=source if whole else None,  # why: an unsplit clip is the source file itself
        source=source,
        clip=j,
        shot=span.shot,
        start=round(span.start / fps, 6),
        end=round(span.end / fps, 6),
        start_frame=span.start,
        end_frame=span.end,
        num_frames=span.frames,
        fps=round(fps, 6),
        height=src.info.height,
        width=src.info.width,
        caption="",
        keep=True,
        drop_reason=None,
    )
    row.update(src.row())
    return row


def _drop(row: dict, reason: str | None) -> None:
    """Mark `row` dropped for `reason` (None: no-op); the first reason stays the reason."""
    if reason is not None and row["keep"]:
        row["keep"], row["drop_reason"] = False, reason


def _score_samples(
    source: str, src: SourceInfo, spans: list[Span], rows: list[dict], cfg: CurateConfig, tools: _Tools
) -> None:
    """OCR and the model plug-ins on `sample_frames` frames of each clip still kept (all with score_all).
    An exception leaves with the step it came from as `curate_stage`."""
    order = [s for s in ("text", "watermark", "aesthetic", "caption") if cfg.has(s)]
    for row, span in zip(rows, spans, strict=True):
        if not order or not (row["keep"] or cfg.score_all):
            continue
        stage = "sample"
        try:
            frames = sample_frames(source, src, span, cfg)  # (k, h, w, 3)
            for stage in order:
                if not (row["keep"] or cfg.score_all):
                    break
                _score_one(stage, frames, row, cfg, tools)
        except ToolLoadError:
            raise
        except Exception as e:
            e.curate_stage = stage  # type: ignore[attr-defined]
            raise


def _score_one(stage: str, frames: np.ndarray, row: dict, cfg: CurateConfig, tools: _Tools) -> None:
    if stage == "text":
        area, row["text_boxes"] = tools.text()(frames)
        row["text_area"] = round(area, 5)
        _drop(row, decide_text(row, cfg))
    elif stage == "watermark":
        row["watermark"] = round(float(tools.plugin("watermark")(frames)), 5)
        if row["watermark"] >= cfg.plugins.max_watermark:
            _drop(row, "watermark")
    elif stage == "aesthetic":
        row["aesthetic"] = round(float(tools.plugin("aesthetic")(frames)), 5)
        if row["aesthetic"] < cfg.plugins.min_aesthetic:
            _drop(row, "aesthetic")
    elif row["keep"]:  # caption: only what is kept
        row["caption"] = str(tools.plugin("caption")(frames))


def sample_frames(source: str, src: SourceInfo, span: Span, cfg: CurateConfig) -> np.ndarray:
    """`cfg.sample_frames` frames at the centres of equal parts of the clip, short side <= sample_short_side:
    uint8 (k, h, w, 3). One seek and one decode through the clip."""
    fps = src.info.fps
    k = max(1, min(cfg.sample_frames, span.frames))
    step = span.frames / k / fps  # seconds between samples
    h, w = src.info.height, src.info.width
    size = None
    if min(h, w) > cfg.sample_short_side:
        s = cfg.sample_short_side / min(h, w)
        size = (round(h * s), round(w * s))
    start = span.start / fps + step / 2
    frames = list(iter_frames(source, start=start, fps=1 / step, num_frames=k, size=size))
    if not frames:
        raise UserError(f"no frames at {start:.3f}s in {source}")
    return np.stack(frames)


def _write_clips(
    source: str,
    src: SourceInfo,
    spans: list[Span],
    rows: list[dict],
    num_frames: int,
    out: Path,
    cfg: CurateConfig,
) -> None:
    if not cfg.has("split") or cfg.cut.mode == "none":
        return
    for row, span in zip(rows, spans, strict=True):
        if not (row["keep"] or cfg.cut.which == "all"):
            continue
        rel = clip_relpath(source, row["clip"])
        try:
            info = write_clip(source, src, span, num_frames, out / rel, cfg.cut)
        except Exception as e:
            _log.warning("cutting clip %d of %s failed: %s", row["clip"], source, _one_line(e))
            _drop(row, "cut_failed")
            continue
        row.update(info, path=rel)


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg}" if not isinstance(e, UserError) else msg
