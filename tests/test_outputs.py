"""What commands write and the processes they start (#21): the same command writes the same bytes; an output
that is an input, or a folder of another command, is refused; bad settings write nothing; SIGTERM and
SIGKILL leave no temp files (or the next run sweeps them) and no worker processes; an error line never
shares a line with a progress bar. Real subprocesses and signals where it matters."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from longvideo.cli import main
from longvideo.data.shapes import ShapesConfig
from longvideo.data.shapes_dataset import write_shapes_dataset
from longvideo.data.video_io import write_video
from longvideo.errors import UserError
from longvideo.outputs import check_folder_for, same_file, sweep_temps, temp_path

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cli(*argv) -> list[str]:
    return [sys.executable, "-m", "longvideo", *map(str, argv)]


def one_line_error(capsys, code: int, needle: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.split("\n") if ln.strip()]
    assert code == 2 and lines and lines[-1].startswith("longvideo: error: ") and needle in lines[-1], err
    assert "\r" not in lines[-1] and "Traceback" not in err, err
    return lines[-1]


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def temps(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if ".tmp" in p.name)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, Z, ...), None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def children(pid: int, needle: str = "") -> list[int]:
    """Live child processes of `pid` whose command line contains `needle`."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] not in ("Z", "X") and needle in cmdline:
            kids.append(int(d))
    return kids


def wait_for(condition, seconds: float = 120, what: str = "") -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from longvideo.pipelines.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny") / "pipe"
    tiny_pipeline().save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- same command, same bytes


def test_generate_twice_writes_byte_identical_mp4s(tmp_path, capsys, tiny_folder):
    for name in ("a.mp4", "b.mp4"):
        argv = ["generate", "a red circle", "--model", tiny_folder, "--frames", "33", "--height", "64",
                "--width", "64", "--steps", "2", "--seed", "5", "-o", tmp_path / name]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_data_shapes_twice_writes_byte_identical_folders(tmp_path):
    for name in ("a", "b"):
        write_shapes_dataset(tmp_path / name, 4, ShapesConfig(num_frames=97), seed=2, progress=False)
    a, b = digests(tmp_path / "a"), digests(tmp_path / "b")
    assert a == b and len(a) == 6  # 4 videos, manifest.jsonl, shapes.json


# ----------------------------------------------------------------------------- outputs that are inputs


def test_generate_refuses_to_write_over_its_image(tmp_path, capsys):
    image = tmp_path / "x.mp4"
    write_video(image, np.zeros((3, 32, 32, 3), np.uint8), fps=8)
    before = image.read_bytes()
    (tmp_path / "link.mp4").symlink_to(image)
    for out, img in ((image, image), (tmp_path / "link.mp4", image), (image, tmp_path / "link.mp4")):
        code = main(["generate", "a red circle", "--image", str(img), "-o", str(out)])
        one_line_error(capsys, code, "is the --image file, an input")
    assert image.read_bytes() == before


def test_eval_shapes_refuses_results_over_its_inputs(tmp_path, capsys):
    write_shapes_dataset(tmp_path / "d", 2, ShapesConfig(num_frames=9), progress=False)
    manifest = tmp_path / "d" / "manifest.jsonl"
    before = digests(tmp_path / "d")
    (tmp_path / "m.jsonl").symlink_to(manifest)
    for results, needle in ((manifest, "the --manifest file"), (tmp_path / "m.jsonl", "the --manifest file"),
                            (tmp_path / "d" / "000001.mp4", "the manifest's video 000001.mp4")):  # fmt: skip
        code = main(["eval", "shapes", "--manifest", str(manifest), "--results", str(results)])
        one_line_error(capsys, code, needle)
    code = main(
        ["eval", "shapes", "--manifest", str(manifest), "--results", str(tmp_path / "no" / "r.jsonl")]
    )
    one_line_error(capsys, code, "not a file in an existing folder")
    assert digests(tmp_path / "d") == before
    assert main(["eval", "shapes", "--manifest", str(manifest), "--results", str(tmp_path / "r.jsonl")]) == 0
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 2


def test_data_shapes_refuses_a_folder_of_another_command(tmp_path, capsys):
    cur = tmp_path / "cur"
    cur.mkdir()
    (cur / "curate.json").write_text("{}\n")
    (cur / "manifest.jsonl").write_text('{"source": "a.mp4"}\n')
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine\n")
    before = {d: digests(d) for d in (cur, other)}
    for folder, needle in ((cur, "holds a curation"), (other, "is not empty (notes.txt)")):
        code = main(["data", "shapes", "-n", "1", "--frames", "5", "-o", str(folder)])
        one_line_error(capsys, code, needle)
    assert {d: digests(d) for d in (cur, other)} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["data", "shapes", "-n", "1", "--frames", "5", "-o", str(empty)]) == 0  # an empty one is fine
    assert main(["data", "shapes", "-n", "2", "--frames", "5", "-o", str(empty)]) == 0  # and its own: resumes
    capsys.readouterr()


def test_curate_output_apart_from_its_inputs(tmp_path):
    from longvideo.curate.config import CurateConfig
    from longvideo.curate.run import curate

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "v.mp4", np.zeros((9, 32, 32, 3), np.uint8), fps=8)
    cfg = CurateConfig(steps=["probe"])
    cases = [
        ([raw], raw / "cur", "is inside the input"),  # the clips would be inputs of the next run
        ([raw], raw, "is inside the input"),
        ([raw / "v.mp4"], raw / "v.mp4", "is inside the input"),
        ([tmp_path], tmp_path / "x", "is inside the input"),
        ([raw / "v.mp4"], tmp_path, "is inside the output folder"),
    ]
    for inputs, out, needle in cases:
        with pytest.raises(UserError, match=needle):
            curate(inputs, out, cfg, progress=False)
    assert sorted(p.name for p in raw.iterdir()) == ["v.mp4"] and not (tmp_path / "x").exists()
    shapes = tmp_path / "shapes"
    write_shapes_dataset(shapes, 1, ShapesConfig(num_frames=5), progress=False)
    with pytest.raises(UserError, match="holds a shapes dataset"):
        curate([raw], shapes, cfg, progress=False)
    assert curate([raw], tmp_path / "cur", cfg, progress=False)["processed"] == 1


def test_curate_merge_refuses_a_folder_of_another_command(tmp_path):
    from longvideo.curate.config import CurateConfig
    from longvideo.curate.manifest import merge
    from longvideo.curate.run import curate

    raw = tmp_path / "raw"
    raw.mkdir()
    write_video(raw / "v.mp4", np.zeros((9, 32, 32, 3), np.uint8), fps=8)
    curate([raw], tmp_path / "s0", CurateConfig(steps=["probe"]), progress=False)
    shapes = tmp_path / "shapes"
    write_shapes_dataset(shapes, 1, ShapesConfig(num_frames=5), progress=False)
    before = digests(shapes)
    with pytest.raises(UserError, match="holds a shapes dataset"):
        merge([tmp_path / "s0"], shapes)
    assert digests(shapes) == before
    (tmp_path / "s1").mkdir()
    (tmp_path / "s1" / "curate.json").write_bytes(b"\x00\xff{")
    with pytest.raises(UserError, match="not valid JSON"):
        merge([tmp_path / "s0", tmp_path / "s1"], tmp_path / "m")


def test_same_file_and_folder_checks(tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "a")
    os.link(tmp_path / "a", tmp_path / "h")
    assert same_file(tmp_path / "a", tmp_path / "l") and same_file(tmp_path / "h", tmp_path / "a")
    assert same_file(tmp_path / "new", tmp_path / "sub" / ".." / "new")  # not there yet: by path
    assert not same_file(tmp_path / "a", tmp_path / "new")
    check_folder_for(tmp_path / "missing", "shapes.json", "data shapes")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".lock").write_text("")  # hidden files do not count
    check_folder_for(tmp_path / "d", "shapes.json", "data shapes")
    with pytest.raises(UserError, match="is a file"):
        check_folder_for(tmp_path / "a", "shapes.json", "data shapes")
    (tmp_path / "d" / "model_index.json").write_text("{}")
    with pytest.raises(UserError, match="holds a pipeline folder"):
        check_folder_for(tmp_path / "d", "shapes.json", "data shapes")


# ----------------------------------------------------------------------------- settings before writing


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"quality": 99}, "quality"),
        ({"quality": 5.5}, "quality"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"n": 0}, "number of videos"),
        ({"cfg": ShapesConfig(colors=["pink"])}, "pink"),
        ({"cfg": ShapesConfig(num_frames=0)}, "num_frames"),
        (  # valid names, but no video has a held-out pair: found when drawing, still before writing
            {"cfg": ShapesConfig(num_frames=5, include_held_out=True, held_out_only=True, colors=["red"])},
            "could not sample",
        ),
    ],
)
def test_data_shapes_bad_settings_write_nothing(tmp_path, kwargs, needle):
    args = {"n": 1, "cfg": ShapesConfig(num_frames=5)} | kwargs
    with pytest.raises(UserError, match=needle):
        write_shapes_dataset(tmp_path / "d", progress=False, **args)
    assert not (tmp_path / "d").exists()


def test_data_shapes_corrected_rerun_after_a_bad_setting(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "shapes", "-n", "1", "--frames", "5", "--quality", "99", "-o", str(out)]) == 2
    assert not out.exists()
    assert main(["data", "shapes", "-n", "1", "--frames", "5", "-o", str(out)]) == 0
    capsys.readouterr()


# ----------------------------------------------------------------------------- temp files


def test_sweep_removes_only_the_temp_files_of_gone_processes(tmp_path):
    gone, mine = dead_pid(), os.getpid()
    names = [f".v.mp4.{gone}.tmp.mp4", f".manifest.jsonl.{gone}.tmp", f".v.mp4.{mine}.tmp.mp4", "v.mp4",
             f".w.mp4.{gone}.tmp.mp4", f"x.{gone}.tmp.mp4", ".v.mp4.tmp.mp4"]  # fmt: skip
    for n in names:
        (tmp_path / n).write_text("")
    assert sweep_temps(tmp_path, name="v.mp4") == 1
    assert sweep_temps(tmp_path) == 2
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([f".v.mp4.{mine}.tmp.mp4", "v.mp4", f"x.{gone}.tmp.mp4", ".v.mp4.tmp.mp4"])
    assert temp_path(tmp_path / "v.mp4") == str(tmp_path / f".v.mp4.{mine}.tmp.mp4")


def test_a_rerun_sweeps_what_a_killed_run_left(tmp_path, capsys, tiny_folder):
    gone = dead_pid()
    out = tmp_path / "d"
    write_shapes_dataset(out, 2, ShapesConfig(num_frames=5), progress=False)
    (out / "000001.mp4").unlink()
    stale = [out / f".000001.mp4.{gone}.tmp.mp4", out / f".000007.mp4.{gone}.tmp.mp4"]
    for p in stale:
        p.write_bytes(b"half a video")
    write_shapes_dataset(out, 2, ShapesConfig(num_frames=5), progress=False)
    assert temps(out) == [] and (out / "000001.mp4").is_file()
    (tmp_path / f".v.mp4.{gone}.tmp.mp4").write_bytes(b"half a video")  # generate: its target's temps
    (tmp_path / f".w.mp4.{gone}.tmp.mp4").write_bytes(b"another target's")
    argv = ["generate", "a red circle", "--model", tiny_folder, "--frames", "1", "--steps", "1", "-o"]
    assert main([*map(str, argv), str(tmp_path / "v.mp4")]) == 0
    capsys.readouterr()
    assert temps(tmp_path) == [f".w.mp4.{gone}.tmp.mp4"] and (tmp_path / "v.mp4").is_file()


@linux
def test_sigterm_during_generate_leaves_no_temp_file(tmp_path, tiny_folder):
    out = tmp_path / "v.mp4"
    proc = subprocess.Popen(cli("generate", "a red circle", "--model", tiny_folder, "--frames", "2001",
                                "--steps", "8", "-o", out), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_for(lambda: temps(tmp_path) or proc.poll() is not None, what="the temp file")
    time.sleep(1)  # into the denoising
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert temps(tmp_path) == [] and not out.exists() and "Traceback" not in err


@linux
@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_during_data_shapes_leaves_no_temp_file_nor_worker(tmp_path, workers):
    out = tmp_path / "d"
    argv = cli("data", "shapes", "-n", "400", "--frames", "97", "--workers", workers, "-o", out)
    proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(out.glob("0*.mp4"))) >= 3 or proc.poll() is not None, what="3 videos")
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    wait_for(lambda: not any(alive(k) for k in kids), 30, "the workers to end")
    assert temps(out) == [] and not (out / "manifest.jsonl").exists() and "Traceback" not in err
    rerun = subprocess.run(cli("data", "shapes", "-n", "3", "--frames", "97", "-o", out), env=ENV,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["videos"] == 3


# ----------------------------------------------------------------------------- worker processes


@pytest.fixture(scope="module")
def raw_videos(tmp_path_factory) -> Path:
    """60 small videos: enough work that a 2-worker curate run is still going when it is killed."""
    raw = tmp_path_factory.mktemp("raw")
    frames = np.zeros((65, 64, 64, 3), np.uint8)
    for t in range(65):
        frames[t, 20:36, t % 48 : t % 48 + 16] = 220
    write_video(raw / "v00.mp4", frames, fps=8)
    for i in range(1, 60):
        (raw / f"v{i:02d}.mp4").write_bytes((raw / "v00.mp4").read_bytes())
    return raw


def _curate(raw: Path, out: Path, log: Path) -> subprocess.Popen:
    """curate with 2 workers, its output in the file `log` (a pipe would be held open by the workers)."""
    argv = cli("curate", raw, "-o", out, "--workers", "2", "--steps", "split,static,motion", "--no-progress",
               "--set", "split.min_seconds=0.5", "--set", "cut.mode=reencode")  # fmt: skip
    with open(log, "w") as f:
        return subprocess.Popen(argv, env=ENV, stdout=f, stderr=subprocess.STDOUT)


def _started(proc: subprocess.Popen, out: Path, log: Path) -> list[int]:
    """Once the run has written its first rows and both workers run: the workers."""
    manifest = out / "manifest.jsonl"
    wait_for(lambda: (manifest.exists() and manifest.stat().st_size > 0) or proc.poll() is not None,
             what="the first rows")  # fmt: skip
    wait_for(lambda: len(children(proc.pid, "spawn_main")) == 2 or proc.poll() is not None, what="2 workers")
    assert proc.poll() is None, log.read_text()[-2000:]
    return children(proc.pid, "spawn_main")


@linux
def test_killed_curate_leaves_no_workers(tmp_path, raw_videos):
    proc = _curate(raw_videos, tmp_path / "out", tmp_path / "log")
    kids = _started(proc, tmp_path / "out", tmp_path / "log")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    wait_for(lambda: not any(alive(k) for k in kids), 60, "the workers to die with their parent")


@linux
def test_sigterm_stops_curate_and_its_workers_at_once(tmp_path, raw_videos):
    out, log = tmp_path / "out", tmp_path / "log"
    proc = _curate(raw_videos, out, log)
    kids = _started(proc, out, log)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    err = log.read_text()
    assert proc.returncode == 143 and time.time() - t0 < 30, err[-2000:]
    wait_for(lambda: not any(alive(k) for k in kids), 30, "the workers to end")
    assert temps(out) == [] and "Traceback" not in err
    rows = [json.loads(ln) for ln in (out / "manifest.jsonl").read_text().splitlines()]  # whole rows only
    assert 0 < len({r["source"] for r in rows}) < 60


# ----------------------------------------------------------------------------- progress bars and errors


def test_an_error_after_a_progress_bar_starts_its_own_line(tmp_path, capsys, monkeypatch):
    import longvideo.data.shapes_dataset as sd

    write = sd._write_one

    def fail_third(job):
        if job[3] == 2:
            raise UserError("the third video failed")
        write(job)

    monkeypatch.setattr(sd, "_write_one", fail_third)
    code = main(["data", "shapes", "-n", "4", "--frames", "5", "-o", str(tmp_path / "d")])
    one_line_error(capsys, code, "the third video failed")
    monkeypatch.undo()

    write_shapes_dataset(tmp_path / "e", 3, ShapesConfig(num_frames=5), progress=False)
    (tmp_path / "e" / "000001.mp4").write_bytes(b"not a video")
    code = main(["eval", "shapes", "--manifest", str(tmp_path / "e" / "manifest.jsonl")])
    one_line_error(capsys, code, "000001.mp4")
