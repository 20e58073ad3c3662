"""The curation outputs and their bookkeeping: OUT/manifest.jsonl, OUT/errors.jsonl, OUT/curate.json.

manifest.jsonl: one row per clip (kept or not; `ROW_FIELDS`), `path` relative to OUT like the shapes
manifests, so the training dataset reads it directly (rows with keep = true have a file).
errors.jsonl: one row per input that could not be processed: {source, stage, reason}.

Crash safety and resume: only the main process writes, and all rows of one input go out in one O_APPEND
write, so an input is either wholly in a file or not at all; a torn last line (a crash mid-write) is cut off
on the next open. An input with a row in either file is done and skipped on a rerun. At the end of a run
the manifest is rewritten sorted (temp file + rename), so equal work gives byte-equal files.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from longvideo.curate.config import DROP_REASONS
from longvideo.errors import UserError
from longvideo.outputs import check_folder_for, same_file

MANIFEST = "manifest.jsonl"
ERRORS = "errors.jsonl"
STAMP = "curate.json"

# Every row has every field (None where a step did not run), so the file converts to a table as is.
# fmt: off
ROW_FIELDS = (
    "path", "source", "clip", "shot", "start", "end", "start_frame", "end_frame", "num_frames", "fps",
    "height", "width", "caption",
    "static_ratio", "frame_diff", "flow_mean", "flow_top5", "text_area", "text_boxes", "watermark",
    "aesthetic", "keep", "drop_reason", "cut",
    "src_frames", "src_fps", "src_height", "src_width", "src_duration", "codec",
)
# fmt: on
# drop reason -> the step that dropped it (for the summary)
REASON_STEP = {
    "too_short": "split",
    "static": "static",
    "low_motion": "motion",
    "high_motion": "motion",
    "text": "text",
    "watermark": "watermark",
    "aesthetic": "aesthetic",
    "cut_failed": "split",
}
assert set(REASON_STEP) == set(DROP_REASONS)


def append_rows(path: Path, rows: Sequence[dict]) -> None:
    """Append `rows` as JSON lines with one write(2) on an O_APPEND descriptor, then fsync."""
    if not rows:
        return
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:  # why: write(2) may write less (signals, huge buffers); finish the same record
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_rows(path: Path, repair: bool = False) -> list[dict]:
    """Rows of a JSONL file ([] if absent). A last line without a newline is a torn write: ignored, and cut
    off the file when `repair`. A bad line elsewhere means the file was edited: UserError."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        if repair:
            with open(path, "r+b") as f:
                f.truncate(keep)
        data = data[:keep]
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (was it overwritten?)") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{i}: not valid JSON (was the file edited?)") from None
        if not isinstance(row, dict) or "source" not in row:
            raise UserError(f"{path}:{i}: a row needs a 'source'")
        rows.append(row)
    return rows


def done_sources(out: Path) -> set[str]:
    """Inputs already in the manifest or the error list (torn last lines are repaired first)."""
    rows = read_rows(out / MANIFEST, repair=True) + read_rows(out / ERRORS, repair=True)
    return {r["source"] for r in rows}


def sort_key(row: dict) -> tuple:
    return (row["source"], row.get("clip") if row.get("clip") is not None else -1, row.get("stage", ""))


def write_sorted(path: Path, rows: Iterable[dict]) -> None:
    """Replace `path` atomically with `rows` sorted by (source, clip)."""
    rows = sorted(rows, key=sort_key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)


def check_stamp(out: Path, stamp: dict) -> None:
    """Record what OUT holds; refuse a rerun with other settings instead of mixing two curations."""
    path = out / STAMP
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(stamp)):
            raise UserError(f"{out} holds a curation made with other settings; use another folder")
    elif (out / MANIFEST).exists():
        raise UserError(f"{out} has a {MANIFEST} but no {STAMP}: not a curate output folder")
    else:
        tmp = path.with_name(f".{STAMP}.tmp")
        tmp.write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(tmp, path)


def merge(shards: Sequence[str | Path], out: str | Path) -> dict:
    """Join shard output folders into `out`: manifests and error lists concatenated and sorted, clip paths
    rewritten relative to `out` (the clip files stay where they are). The shards must share one config."""
    out = Path(out)
    shards = [Path(s) for s in shards]
    if not shards:
        raise UserError("curate --merge: give the shard output folders")
    stamps = []
    for s in shards:
        if not (s / STAMP).is_file():
            raise UserError(f"curate --merge: {s} is not a curate output folder (no {STAMP})")
        try:
            stamps.append(json.loads((s / STAMP).read_text()))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"curate --merge: {s / STAMP} is not valid JSON (was it edited?)") from None
    if any(st != stamps[0] for st in stamps[1:]):
        raise UserError("curate --merge: the shards were made with different settings")
    if any(same_file(out, s) for s in shards):
        raise UserError("curate --merge: the output folder must not be one of the shards")
    check_folder_for(out, STAMP, "curate --merge")
    rows: dict[tuple, dict] = {}
    errors: dict[str, dict] = {}
    for s in shards:  # every shard is read before anything is written: a bad one leaves no `out`
        for r in read_rows(s / MANIFEST):
            if isinstance(r.get("path"), str) and r["path"] and not os.path.isabs(r["path"]):
                r["path"] = os.path.relpath(s / r["path"], out)
            rows.setdefault((r["source"], r.get("clip")), r)  # why: an input run by two shards counts once
        for e in read_rows(s / ERRORS):
            errors.setdefault(e["source"], e)
    out.mkdir(parents=True, exist_ok=True)
    check_stamp(out, stamps[0])
    done = {k[0] for k in rows}
    write_sorted(out / MANIFEST, rows.values())
    write_sorted(out / ERRORS, [e for src, e in errors.items() if src not in done])
    return summarize(out)


def summarize(out: Path, extra: dict | None = None) -> dict:
    """Counts per step and per drop reason over the whole output folder (this run and earlier ones)."""
    rows = read_rows(out / MANIFEST)
    errors = read_rows(out / ERRORS)
    sources = {r["source"] for r in rows}
    kept = [r for r in rows if r.get("keep")]
    reasons = Counter(r["drop_reason"] for r in rows if not r.get("keep"))
    err_stage = Counter(e.get("stage", "?") for e in errors)
    steps: dict[str, dict] = {
        "probe": {
            "ok": len(sources) + sum(v for k, v in err_stage.items() if k != "probe"),
            "failed": err_stage.get("probe", 0),
        },
    }
    for stage, n in sorted(err_stage.items()):
        if stage != "probe":
            steps.setdefault(stage, {})["failed_inputs"] = n
    steps.setdefault("split", {}).update(
        {"shots": len({(r["source"], r["shot"]) for r in rows}), "clips": len(rows)}
    )
    for reason, n in reasons.items():
        step = steps.setdefault(REASON_STEP.get(reason, reason), {})
        step[f"dropped_{reason}"] = n
    summary = {
        "inputs": len(sources) + len(errors),
        "processed": len(sources),
        "errors": len(errors),
        "clips": len(rows),
        "kept": len(kept),
        "kept_hours": round(sum(r["end"] - r["start"] for r in kept) / 3600, 4),
        "drop_reasons": dict(sorted(reasons.items())),
        "error_stages": dict(sorted(err_stage.items())),
        "steps": steps,
        "manifest": str(out / MANIFEST),
        "errors_file": str(out / ERRORS),
    }
    return summary | (extra or {})
