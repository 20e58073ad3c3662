"""Fuzz: bad input to every subcommand, and what must hold for each (issue #21, SECURITY.md).

Every bad input must give exit code 2 and exactly one stderr line, `longvideo: error: ...` (no traceback),
and leave the test's folder tree exactly as it was: no output, no temporary file, nothing in the working
directory. While a command runs, an audit hook records every file the process opens, lists, renames or
removes: nothing may be read from a canary folder beside the inputs, nor written anywhere but the output
folder. A case that is in fact valid input asserts success instead, with the same checks on what it wrote
(no temporary file left, the canary's text in no output).

Commands run in-process through `longvideo.cli.main`, each under a time limit; a case that asks for a huge
size also under an address-space limit, so a missing size check fails that case instead of exhausting the
machine. Only what could kill the test process itself (a native crash) runs as a subprocess. Hypothesis
draws numbers, bytes and config values with a fixed budget (derandomized, no example database).

Layout of each case's sandbox: in/ (inputs, copied there), out/ (outputs), cwd/ (the working directory,
empty), outside/secret.txt (the canary; symlinks in the inputs point there).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import contextlib
import ctypes
import json
import math
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from longvideo.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

CANARY = b"longvideo-fuzz-canary-5b1e0c9d"
PROMPT = "a large red circle moving right quickly on a black background"
HUGE = 10**12
# seconds a huge request may take to be refused: it must fail at once, before any work (a knob for
# re-running the suite quickly while the size checks are missing)
HUGE_TIMEOUT = int(os.environ.get("LONGVIDEO_FUZZ_HUGE_TIMEOUT", "60"))
FUZZ = settings(
    max_examples=10,
    derandomize=True,
    deadline=None,
    database=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: cuda is valid input")


# ----------------------------------------------------------------------------- what the process touches

_record: list[tuple[str, str]] | None = None
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
# event -> (how many leading path arguments it writes, the index of its dir_fd argument or None)
_WRITES = {"os.remove": (1, 1), "os.rmdir": (1, 1), "os.mkdir": (1, 2), "os.chmod": (1, 2),
           "os.utime": (1, 3), "os.truncate": (1, None), "shutil.rmtree": (1, 1),
           "os.rename": (2, 2)}  # fmt: skip


def _where(path: object, dir_fd: object = None, follow: bool = False) -> str | None:
    """The absolute path an event names (resolved; the last part left as it is unless `follow`: a removed
    link is the link); None for a file descriptor or a path relative to an unknown folder."""
    if path is None or isinstance(path, int):
        return None
    p = os.fsdecode(path)  # type: ignore[arg-type]
    if not os.path.isabs(p):
        if not isinstance(dir_fd, int):
            return None  # `open` events do not carry the dir_fd that shutil.rmtree & co. open relative to
        p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
    if follow:
        return os.path.realpath(p)
    return os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p))


def _audit(event: str, args: tuple) -> None:
    if _record is None:
        return
    rec = _record.append
    if event == "open":
        path, _, flags = args
        write = bool((flags or 0) & _WRITE_FLAGS)
        rec(("write" if write else "read", _where(path, follow=not write)))
    elif event in _WRITES:
        n, fd = _WRITES[event]
        for a in args[:n]:
            rec(("write", _where(a, args[fd] if fd is not None else None)))
    elif event in ("os.symlink", "os.link"):
        rec(("write", _where(args[1])))
    elif event in ("shutil.copyfile", "shutil.copytree"):
        rec(("read", _where(args[0], follow=True)))
        rec(("write", _where(args[1])))
    elif event in ("os.listdir", "os.scandir"):
        rec(("read", _where(args[0], follow=True)))


sys.addaudithook(_audit)


def _outputs(argv: list[str]) -> list[str]:
    """The paths a command line names as its outputs (-o, --results, convert's DST, out= / export=)."""
    found = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-o", "--output", "--results")]
    if argv[:1] == ["convert"]:
        found += [a for a in argv[3:5] if not a.startswith("-")][1:]
    found += [a.split("=", 1)[1] for a in argv if a.startswith(("out=", "export="))]
    return [_where(os.path.abspath(f)) or f for f in found]


def _temp_of(path: str, output: str) -> bool:
    """A temporary sibling of an output (`.NAME.tmp-PID`, `.NAME.tmp`)."""
    d, name = os.path.split(output)
    return os.path.dirname(path) == d and os.path.basename(path).startswith(f".{name}")


_IN_ACCESS, _IN_OPEN = 0x1, 0x20
_libc = ctypes.CDLL(None, use_errno=True)


class _Opens:
    """What any code of any process (native readers too: safetensors, tokenizers, FFmpeg, which the audit
    hook does not see) opens or reads under some folders, through inotify."""

    def __init__(self, *roots: Path):
        self.dirs: dict[int, str] = {}
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 (raise fs.inotify.max_user_instances?)")
        folders = [d for root in roots for d, _, _ in os.walk(root)]  # listed first: the walk opens them
        for d in folders:
            wd = _libc.inotify_add_watch(self.fd, os.fsencode(d), _IN_OPEN | _IN_ACCESS)
            if wd >= 0:
                self.dirs[wd] = d

    def read(self) -> list[str]:
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        os.close(self.fd)
        paths, i = [], 0
        while i + 16 <= len(data):
            wd, _, _, n = struct.unpack_from("iIII", data, i)
            name = data[i + 16 : i + 16 + n].split(b"\0", 1)[0].decode(errors="replace")
            i += 16 + n
            if wd in self.dirs:
                paths.append(os.path.join(self.dirs[wd], name) if name else self.dirs[wd])
        return sorted(set(paths))


class _Timeout(BaseException):
    """Not an Exception: the CLI's catch-all must not turn it into an error line."""


def _vm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _limits(seconds: int, memory_gib: float | None):
    """Stop a command after `seconds`; with `memory_gib`, let it map at most that much more memory."""

    def on_alarm(*_):
        raise _Timeout(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if memory_gib is not None:
        cap = _vm_bytes() + int(memory_gib * 2**30)
        resource.setrlimit(
            resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard)
        )
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


# ----------------------------------------------------------------------------- the sandbox


def _snapshot(root: Path) -> dict[str, tuple]:
    snap = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(d) / name
            s = p.lstat()
            link = os.readlink(p) if p.is_symlink() else None
            if p.is_dir() and not p.is_symlink():  # a folder's own times change as files come and go
                snap[str(p.relative_to(root))] = (s.st_mode, None, None, None)
            else:
                snap[str(p.relative_to(root))] = (s.st_mode, s.st_size, s.st_mtime_ns, link)
    return snap


def _garbage(n: int = 512, seed: int = 0) -> bytes:
    """Bytes that are no text, image, video, YAML or JSON: a NUL and an invalid UTF-8 byte first."""
    return b"\x00\xff\xfe" + random.Random(seed).randbytes(n)


def _png(height: int = 32, width: int = 32) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes((x * 7 + y * 3) % 256 for x in range(width * 3)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@dataclass
class Result:
    code: int | str
    out: str
    err: str
    argv: list[str]

    def __str__(self) -> str:
        return f"longvideo {' '.join(self.argv)}\n-> exit {self.code}\n--- stderr ---\n{self.err[-3000:]}"


class Box:
    """One case's folders (in/, out/, cwd/, outside/), commands run in it, and the checks after them."""

    def __init__(self, capfd):
        self.capfd = capfd
        self.root = Path(tempfile.mkdtemp(prefix="fuzz-")).resolve()
        self.inp, self.out, self.cwd = self.root / "in", self.root / "out", self.root / "cwd"
        self.outside = self.root / "outside"
        for d in (self.inp, self.out, self.cwd, self.outside):
            d.mkdir()
        self.secret = self.outside / "secret.txt"
        self.secret.write_bytes(CANARY + b"\n")
        self._old_cwd = os.getcwd()
        os.chdir(self.cwd)

    def close(self) -> None:
        os.chdir(self._old_cwd)
        shutil.rmtree(self.root, ignore_errors=True)

    # inputs
    def put(self, name: str, src: Path | None = None, data: bytes | str | None = None) -> Path:
        """in/NAME: a copy of file or folder `src`, or a file holding `data`."""
        dst = self.inp / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src is not None and src.is_dir():
            shutil.copytree(src, dst)
        elif src is not None:
            shutil.copyfile(src, dst)
        else:
            dst.write_bytes(data.encode() if isinstance(data, str) else (data or b""))
        return dst

    # running
    def call(self, argv, timeout: int = 180, memory_gib: float | None = None) -> tuple[Result, list]:
        global _record
        argv = [str(a) for a in argv]
        self.capfd.readouterr()
        opens = _Opens(self.outside, self.cwd)
        _record = []
        try:
            with _limits(timeout, memory_gib):
                code: int | str = main(argv)
        except SystemExit as e:
            code = f"SystemExit({e.code})"
        except _Timeout as e:
            code = f"timeout ({e})"
        except MemoryError:
            code = "MemoryError escaped main()"
        finally:
            events, _record = _record, None
        events += [("read", p) for p in opens.read()]
        out, err = self.capfd.readouterr()
        return Result(code, out, err, argv), events

    def sub(self, argv, timeout: int = 300) -> tuple[Result, list]:
        """The command as its own process (for what could crash the interpreter); what it opened under
        outside/ and cwd/. `-P`: as the console script, the working directory is not on sys.path (the
        import system would list it)."""
        argv = [str(a) for a in argv]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

        def cap_memory():
            resource.setrlimit(resource.RLIMIT_AS, (16 * 2**30, resource.RLIM_INFINITY))

        opens = _Opens(self.outside, self.cwd)
        try:
            cmd = [sys.executable, "-P", "-m", "longvideo", *argv]
            r = subprocess.run(cmd, cwd=self.cwd, env=env, text=True, capture_output=True, timeout=timeout,
                               preexec_fn=cap_memory)  # fmt: skip
            res = Result(r.returncode, r.stdout, r.stderr, argv)
        except subprocess.TimeoutExpired as e:
            res = Result(f"timeout ({timeout} s)", "", str(e.stderr or ""), argv)
        return res, [("read", p) for p in opens.read()]

    # checks
    def _touched(self, events: list, res: Result) -> None:
        """Nothing read from outside/ or cwd/, nothing written but under out/ or a path the command was
        given as its output (and Python's caches)."""
        outputs = [str(self.out), *_outputs(res.argv)]
        inp, out, root = str(self.inp), str(self.out), str(self.root)
        tmp = os.path.realpath(tempfile.gettempdir())
        bad, private = [], set()
        for kind, p in events:
            if p is None or "__pycache__" in p or p.startswith(("/dev/", "/proc/")):
                continue
            if kind == "read":
                inside = p.startswith(root + os.sep)
                if inside and not (p.startswith((inp + os.sep, out + os.sep)) or p in (inp, out)):
                    bad.append(f"read {p}")  # outside/, cwd/
            elif any(p == o or p.startswith(o + os.sep) or _temp_of(p, o) for o in outputs):
                continue
            elif p.startswith(tmp + os.sep) and not p.startswith(root + os.sep):
                top = os.path.relpath(p, tmp).split(os.sep)[0]
                if not top.startswith("torchinductor_"):  # torch's own compile cache (kept by design)
                    private.add(os.path.join(tmp, top))
            else:
                bad.append(f"wrote {p}")
        # a private temporary folder (tempfile) is fine while the command runs, and gone after it
        bad += [f"left {p} (written in the temporary folder)" for p in sorted(private) if os.path.lexists(p)]
        assert not bad, f"{res}\n--- touched outside the named folders ---\n" + "\n".join(bad[:10])

    def error(self, argv, needle: str | None = None, progress: bool = False, **kw) -> str:
        """Run a bad input: exit 2, one `longvideo: error:` line, the tree unchanged; the error text."""
        before = _snapshot(self.root)
        res, events = self.call(argv, **kw)
        assert_one_line_error(res, needle, progress)
        self._touched(events, res)
        after = _snapshot(self.root)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"{res}\n--- the folder tree changed ---\n" + "\n".join(changed[:20])
        return res.err.strip().splitlines()[-1]

    def ok(self, argv, **kw) -> str:
        """Run a valid input: exit 0, no traceback, nothing left but its outputs; its stdout."""
        before = _snapshot(self.root)
        res, events = self.call(argv, **kw)
        assert res.code == 0 and "Traceback" not in res.err, str(res)
        self._touched(events, res)
        self.check_written(before, res)
        return res.out

    def check_written(self, before: dict, res: Result) -> None:
        after = _snapshot(self.root)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        elsewhere = [k for k in changed if not k.startswith("out" + os.sep)]
        assert not elsewhere, f"{res}\n--- changed outside out/ ---\n" + "\n".join(elsewhere[:20])
        temps = [k for k in after if ".tmp" in k or ".old-" in k or "tmp-" in Path(k).name]
        assert not temps, f"{res}\n--- temporary files left ---\n" + "\n".join(temps[:20])
        for k in changed:
            p = self.root / k
            if p.is_file() and not p.is_symlink():
                assert CANARY not in p.read_bytes(), f"{res}\n--- {k} holds the canary's text ---"
            assert not p.is_symlink(), f"{res}\n--- {k} is a symlink in the output ---"


def assert_one_line_error(res: Result, needle: str | None = None, progress: bool = False) -> None:
    """Exit 2, no traceback, one stderr line `longvideo: error: ...`; with `progress`, progress bars may
    come before it, but never on its line."""
    assert res.code == 2, str(res)
    assert "Traceback" not in res.err + res.out, str(res)
    lines = [ln for ln in res.err.split("\n") if ln.strip()]
    assert lines, str(res)
    if not progress:
        assert len(lines) == 1, f"{res}\n(expected exactly one stderr line)"
    mine = [ln for ln in lines if "longvideo:" in ln]
    assert len(mine) == 1 and mine[0] == lines[-1] and mine[0].startswith("longvideo: error: "), str(res)
    assert "\r" not in mine[0], f"{res}\n(the error shares its line with a progress bar)"
    if needle is not None:
        assert needle in mine[0], f"{res}\n(expected {needle!r} in the error)"


@pytest.fixture
def box(capfd):
    b = Box(capfd)
    yield b
    b.close()


@contextlib.contextmanager
def sandbox(capfd):
    """A fresh Box for one hypothesis example."""
    b = Box(capfd)
    try:
        yield b
    finally:
        b.close()


# ----------------------------------------------------------------------------- inputs written once


@dataclass
class Assets:
    pipe: Path  # a tiny VideoPipeline folder
    vae: Path  # its vae/
    video: Path  # a 5-frame shapes-world mp4
    caption: str
    manifest: Path  # its manifest.jsonl (path relative to it)
    png: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    from longvideo.data.shapes import ShapesConfig
    from longvideo.data.shapes_dataset import write_shapes_dataset
    from longvideo.pipelines.tiny import tiny_pipeline

    root = tmp_path_factory.mktemp("fuzz-assets")
    tiny_pipeline().save_pretrained(root / "pipe")
    write_shapes_dataset(root / "ds", 1, ShapesConfig(num_frames=5), seed=3, progress=False)
    row = json.loads((root / "ds" / "manifest.jsonl").read_text().splitlines()[0])
    (root / "img.png").write_bytes(_png())
    return Assets(root / "pipe", root / "pipe" / "vae", root / "ds" / row["path"], row["caption"],
                  root / "ds" / "manifest.jsonl", root / "img.png")  # fmt: skip


def edit_json(path: Path, **change) -> None:
    data = json.loads(path.read_text())
    for key, value in change.items():
        node = data
        *parents, leaf = key.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path.write_text(json.dumps(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def outside_link(box: Box, link: Path, target_name: str, src: Path | None = None) -> None:
    """Replace `link` with a symlink to outside/TARGET_NAME (a copy of `src`, or the canary)."""
    target = box.outside / target_name
    if src is not None:
        (shutil.copytree if src.is_dir() else shutil.copyfile)(src, target)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target if src is not None else box.secret)


# ----------------------------------------------------------------------------- every command: arguments

ARG_ERRORS = [
    [],
    ["frobnicate"],
    ["--nope"],
    ["generate"],
    ["models", "--nope"],
    ["models", "extra"],
    ["serve"],
    ["serve", "--port", "1"],
    ["train"],
    ["curate"],
    ["convert", "a", "b"],
    ["convert", "--from", "nope", "a", "b"],
    ["data"],
    ["data", "shapes", "-n", "2"],
    ["eval"],
    ["eval", "nope"],
    ["eval", "shapes"],
    ["bench"],
    ["bench", "vae", "--dtype", "float8"],
    ["bench", "vae", "--frames", "x"],
    ["eval", "recon", "--chunk", "-1"],
    ["generate", PROMPT, "--frames", "0"],
    ["generate", PROMPT, "--frames", "-1"],
    ["generate", PROMPT, "--frames", "1e3"],
    ["generate", PROMPT, "--frames", ""],
    ["generate", PROMPT, "--window", "0"],
    ["generate", PROMPT, "--overlap", "-1"],
    ["generate", PROMPT, "--steps", "x"],
    ["generate", PROMPT, "--height", "1.5"],
    ["generate", PROMPT, "--seed", "nan"],
    ["generate", PROMPT, "--guidance", "x"],
    ["generate", PROMPT, "--cond-noise", "x"],
    ["data", "shapes", "-n", "x", "-o", "{out}/d"],
    ["data", "shapes", "-n", "2", "-o", "{out}/d", "--objects", "1,x"],
]


@pytest.mark.parametrize("argv", ARG_ERRORS, ids=lambda a: " ".join(a) or "(none)")
def test_bad_arguments(box, argv):
    box.error([a.replace("{out}", str(box.out)) for a in argv])


def test_models_lists_json(box):
    rows = json.loads(box.ok(["models", "--json"]))
    assert isinstance(rows, list) and all("name" in r for r in rows)


# ----------------------------------------------------------------------------- generate


def gen(box: Box, assets: Assets, *extra, model: Path | None = None) -> list:
    model = model if model is not None else box.put("pipe", assets.pipe)
    return ["generate", PROMPT, "--model", model, "-o", box.out / "v.mp4", *extra]


GENERATE_ERRORS = [
    ["--height", "0"],
    ["--height", "-16"],
    ["--width", "17"],
    ["--steps", "0"],
    ["--steps", "-1"],
    ["--guidance", "nan"],
    ["--guidance", "inf"],
    ["--guidance", "-inf"],
    ["--seed", "99999999999999999999999"],
    ["--cond-noise", "nan"],
    ["--cond-noise", "1.0"],
    ["--cond-noise", "-0.5"],
    ["--overlap", "100", "--frames", "40"],
    ["--sampler", "nope"],
]


@pytest.mark.parametrize("extra", GENERATE_ERRORS, ids=" ".join)
def test_generate_bad_options(box, assets, extra):
    box.error(gen(box, assets, *extra))


HUGE_GENERATE = [
    ["--frames", str(HUGE)],
    ["--height", "100000", "--width", "100000"],
    ["--steps", "1000000000"],
    ["--frames", "100001", "--window", "100001", "--height", "1024", "--width", "1024"],
]


@pytest.mark.parametrize("extra", HUGE_GENERATE, ids=" ".join)
def test_generate_huge_sizes_are_refused(box, assets, extra):
    box.error(gen(box, assets, *extra), timeout=HUGE_TIMEOUT, memory_gib=3)


@pytest.mark.parametrize("kind", ["garbage", "text", "missing", "folder", "truncated_png"])
def test_generate_bad_image(box, assets, kind):
    image = box.inp / "image.png"
    if kind == "garbage":
        image.write_bytes(_garbage())
    elif kind == "text":
        image.write_text("not an image\n")
    elif kind == "folder":
        image.mkdir()
    elif kind == "truncated_png":
        image.write_bytes(_png()[:60])
    box.error(gen(box, assets, "--image", image))


def test_generate_refuses_to_overwrite_its_input(box, assets):
    video = box.put("v.mp4", assets.video)
    box.error(["generate", PROMPT, "--model", box.put("pipe", assets.pipe), "--image", video, "-o", video])


@pytest.mark.parametrize("target", ["txt", "folder", "no_parent_file"])
def test_generate_bad_output(box, assets, target):
    out = {"txt": box.out / "v.txt", "folder": box.out, "no_parent_file": box.out / "f.txt" / "v.mp4"}[target]
    if target == "no_parent_file":
        (box.out / "f.txt").write_text("a file, not a folder\n")
    argv = gen(box, assets)
    argv[argv.index("-o") + 1] = out
    box.error(argv)


def test_generate_empty_prompt(box, assets):
    argv = gen(box, assets)
    argv[1] = ""
    box.error(argv, needle="prompt")


@pytest.mark.parametrize("prompt", ["\x00 bin\x01ary \ufffd", "word " * 5000], ids=["binary", "long"])
def test_generate_odd_prompts_are_valid(box, assets, prompt):
    argv = gen(box, assets, "--frames", "1", "--steps", "1")
    argv[1] = prompt
    res = json.loads(box.ok(argv).strip().splitlines()[-1])
    assert res["frames"] == 1 and (box.out / "v.mp4").is_file()


def test_generate_writes_only_its_output(box, assets):
    box.ok(
        gen(
            box,
            assets,
            "--frames",
            "5",
            "--steps",
            "1",
            "--seed",
            "3",
            "--image",
            box.put("i.png", assets.png),
        )
    )
    assert sorted(p.name for p in box.out.iterdir()) == ["v.mp4"]


# pipeline folders: each mutation of a copy of the tiny pipeline is a one-line error


def _bin_state_dict(folder: Path) -> None:
    """Replace model.safetensors by a weights-only pickle of the same tensors (pytorch_model.bin)."""
    sd = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(sd, folder / "pytorch_model.bin")


PIPELINE_BREAKS = {
    "index_binary": lambda p, b: (p / "model_index.json").write_bytes(_garbage()),
    "index_list": lambda p, b: (p / "model_index.json").write_text("[1, 2]"),
    "index_format_99": lambda p, b: edit_json(p / "model_index.json", _format=99),
    "index_class": lambda p, b: edit_json(p / "model_index.json", _class_name=["x"]),
    "index_max_length": lambda p, b: edit_json(p / "model_index.json", text_encoder_config__max_length=-5),
    "transformer_truncated": lambda p, b: truncate(p / "transformer" / "model.safetensors"),
    "transformer_garbage": lambda p, b: (p / "transformer" / "model.safetensors").write_bytes(_garbage()),
    "transformer_config_binary": lambda p, b: (p / "transformer" / "config.json").write_bytes(_garbage()),
    "transformer_layers_str": lambda p, b: edit_json(p / "transformer" / "config.json", num_layers="many"),
    "transformer_layers_negative": lambda p, b: edit_json(p / "transformer" / "config.json", num_layers=-2),
    "transformer_layers_shape": lambda p, b: edit_json(p / "transformer" / "config.json", num_layers=3),
    "vae_config_types": lambda p, b: edit_json(p / "vae" / "config.json", base_channels="8"),
    "vae_config_negative": lambda p, b: edit_json(p / "vae" / "config.json", latent_channels=-4),
    "vae_config_mismatch": lambda p, b: edit_json(p / "vae" / "config.json", base_channels=16),
    "vae_missing": lambda p, b: shutil.rmtree(p / "vae"),
    "scheduler_binary": lambda p, b: (p / "scheduler" / "config.json").write_bytes(_garbage()),
    "scheduler_types": lambda p, b: edit_json(p / "scheduler" / "config.json", diffusion__objective=3),
    "scheduler_unknown": lambda p, b: edit_json(p / "scheduler" / "config.json", diffusion__nope=1),
    "scheduler_timesteps_huge": lambda p, b: edit_json(
        p / "scheduler" / "config.json", diffusion__num_train_timesteps=HUGE
    ),
    "scheduler_timesteps_zero": lambda p, b: edit_json(
        p / "scheduler" / "config.json", diffusion__num_train_timesteps=0
    ),
    "scheduler_beta_nan": lambda p, b: edit_json(
        p / "scheduler" / "config.json", diffusion__beta_end=float("nan")
    ),
    "text_encoder_config_binary": lambda p, b: (p / "text_encoder" / "config.json").write_bytes(_garbage()),
    "text_encoder_truncated": lambda p, b: truncate(p / "text_encoder" / "model.safetensors"),
    "text_encoder_pickle_only": lambda p, b: _bin_state_dict(p / "text_encoder"),
    "tokenizer_binary": lambda p, b: (p / "tokenizer" / "tokenizer.json").write_bytes(_garbage()),
    "tokenizer_missing": lambda p, b: shutil.rmtree(p / "tokenizer"),
    # confinement: a component's file or folder that resolves outside the pipeline folder is refused
    "link_transformer_weights": lambda p, b: outside_link(
        b, p / "transformer" / "model.safetensors", "w.safetensors", p / "transformer" / "model.safetensors"
    ),
    "link_vae_folder": lambda p, b: outside_link(b, p / "vae", "vae", p / "vae"),
    "link_text_encoder_weights": lambda p, b: outside_link(
        b,
        p / "text_encoder" / "model.safetensors",
        "te.safetensors",
        p / "text_encoder" / "model.safetensors",
    ),
    "link_tokenizer_file": lambda p, b: outside_link(
        b, p / "tokenizer" / "tokenizer.json", "tokenizer.json", p / "tokenizer" / "tokenizer.json"
    ),
    "link_scheduler_to_canary": lambda p, b: outside_link(b, p / "scheduler" / "config.json", "secret.txt"),
}

HUGE_PIPELINE = {
    "transformer_layers_huge": lambda p, b: edit_json(p / "transformer" / "config.json", num_layers=10**6),
    "transformer_width_huge": lambda p, b: edit_json(p / "transformer" / "config.json", num_heads=10**5),
    "vae_channels_huge": lambda p, b: edit_json(p / "vae" / "config.json", base_channels=10**6),
    "default_frames_huge": lambda p, b: edit_json(p / "scheduler" / "config.json", defaults__frames=HUGE),
    "default_size_huge": lambda p, b: edit_json(
        p / "scheduler" / "config.json", defaults__height=100000, defaults__width=100000
    ),
    "default_steps_huge": lambda p, b: edit_json(p / "scheduler" / "config.json", defaults__steps=10**9),
}


@pytest.mark.parametrize("brk", PIPELINE_BREAKS)
def test_generate_broken_pipeline_folder(box, assets, brk):
    pipe = box.put("pipe", assets.pipe)
    PIPELINE_BREAKS[brk](pipe, box)
    box.error(gen(box, assets, "--frames", "1", "--steps", "1", model=pipe))


@pytest.mark.parametrize("brk", HUGE_PIPELINE)
def test_generate_huge_pipeline_configs_are_refused(box, assets, brk):
    pipe = box.put("pipe", assets.pipe)
    HUGE_PIPELINE[brk](pipe, box)
    box.error(gen(box, assets, model=pipe), timeout=HUGE_TIMEOUT, memory_gib=3)


@pytest.mark.parametrize("kind", ["missing", "file", "empty_folder"])
def test_generate_not_a_pipeline(box, assets, kind):
    model = {"missing": box.inp / "nope", "file": box.put("f.txt", data="x"), "empty_folder": box.inp}[kind]
    box.error(gen(box, assets, model=model))


def _template(*pieces: dict) -> dict:
    return {"type": "TemplateProcessing", "single": list(pieces), "pair": [], "special_tokens": {}}


# tokenizer.json edits the tokenizers library panics on (a Rust panic, exit 1 or 134 before #21)
CRAFTED_TOKENIZERS = {
    "undefined_special_token": lambda t: t.update(post_processor=_template(
        {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<eos-x>", "type_id": 0}})),
    "second_sequence_in_single": lambda t: t.update(post_processor=_template(
        {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}})),
    "garbage_charsmap": lambda t: t.update(normalizer={"type": "Precompiled",
                                                       "precompiled_charsmap": "BwAAAGdhcmJhZ2Uh"}),
}  # fmt: skip


@pytest.mark.parametrize("case", CRAFTED_TOKENIZERS)
def test_a_crafted_tokenizer_is_a_one_line_error(box, assets, case):
    """The first case as its own process (a panic in the library's threads aborts it), the others
    in-process."""
    pipe = box.put("pipe", assets.pipe)
    tok = json.loads((pipe / "tokenizer" / "tokenizer.json").read_text())
    CRAFTED_TOKENIZERS[case](tok)
    (pipe / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    argv = gen(box, assets, "--frames", "1", "--steps", "1", model=pipe)
    if case != next(iter(CRAFTED_TOKENIZERS)):
        box.error(argv, needle="tokenizer")
        return
    before = _snapshot(box.root)
    res, opened = box.sub(argv)
    assert_one_line_error(res, needle="tokenizer")
    box._touched(opened, res)
    assert _snapshot(box.root) == before, str(res)


# ----------------------------------------------------------------------------- train


def tiny_train_config(box: Box, task: str) -> Path:
    out = box.out / "run"
    if task == "vae":
        text = f"""task: vae
out: {out}
model: {{base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, encoder_blocks: ["3d", "3d"],
         decoder_blocks: ["3d", "3d"], down: ["spacetime", ""], up: ["", "spacetime"], norm_groups: 4}}
steps: 2
batch_size: 1
image_batch_size: 1
save_every: 1000
"""
    else:
        text = f"""task: dit
out: {out}
vae: shapes
text_encoder: shapes
model: {{family: full3d, in_channels: 16, cond_channels: 17, text_dim: 64, patch_size: [1, 2, 2],
         num_layers: 1, num_heads: 2, head_dim: 24}}
data: {{num_videos: 2}}
steps: 2
batch_size: 1
save_every: 1000
"""
    return box.put(f"{task}.yaml", data=text)


@pytest.mark.parametrize("task", ["vae", "dit"])
def test_train_tiny_configs_run(box, task):
    """The configs every train case breaks are valid: each case fails for its own reason."""
    res = json.loads(box.ok(["train", tiny_train_config(box, task)], timeout=240).strip().splitlines()[-1])
    assert res["steps"] == 2


CONFIG_FILES = {
    "binary": _garbage(),
    "invalid_utf8": b"task: vae\nout: \xff\xfe\n",
    "nul": b"task: vae\x00\n",
    "python_tag": b"task: !!python/object/apply:os.system ['touch pwned']\n",
    "python_name": b"task: !!python/name:os.system\n",
    "custom_tag": b"task: !mine vae\n",
    "binary_tag": b"task: !!binary aGVsbG8=\n",
    "list": b"- task\n- vae\n",
    "scalar": b"42\n",
    "deep": b"[" * 5000 + b"]" * 5000,
    "anchors": b'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n'
    + b"c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n",
    "unknown_key": b"task: vae\nnope: 1\n",
    "wrong_type": b"task: vae\nsteps: [1, 2]\n",
}


@pytest.mark.parametrize("kind", CONFIG_FILES)
def test_train_bad_config_file(box, assets, kind):
    config = box.put("c.yaml", data=CONFIG_FILES[kind])
    box.error(["train", config], needle="alias" if kind == "anchors" else None)
    assert not (box.cwd / "pwned").exists()


@pytest.mark.parametrize("kind", ["missing", "folder", "mp4", "png"])
def test_train_config_not_yaml(box, assets, kind):
    config = box.inp / "c.yaml"
    if kind == "missing":
        config = box.inp / "nope.yaml"
    elif kind == "folder":
        config = box.inp
    else:
        config = box.put("c.yaml", {"mp4": assets.video, "png": assets.png}[kind])
    err = box.error(["train", config])
    assert CANARY.decode() not in err


TRAIN_OVERRIDES = {
    "vae": [
        "lr=-1",
        "lr=.nan",
        "lr=.inf",
        "lr=0",
        "lr=abc",
        "steps=-1",
        "steps=0",
        "steps=1.5",
        "batch_size=0",
        "video_frames=10",
        "video_frames=-3",
        "model.latent_channels=-4",
        "model.channel_mult=[]",
        "ema_decay=2",
        "grad_clip=.nan",
        "kl_weight=-1",
        "betas=[2,3]",
        "seed=99999999999999999999999",
        "warmup=-5",
        "keep=-1",
        "save_every=0",
        "threads=-2",
        "nope=1",
        "model.nope=1",
        "steps",
        "=3",
        "model..x=1",
        "steps=!!python/object/apply:os.system ['touch pwned']",
        "init={missing}",
        "init={binary}",
        "export={config}",
        "out={config}",
        "out={binary}",
    ],
    "dit": [
        "lr=-1",
        "lr=.nan",
        "steps=0",
        "vae={missing}",
        "vae={binary}",
        "text_encoder={binary}",
        "init={missing}",
        "data.cache={binary}",
        "data.source=manifest",
        "data.source=manifest data.manifest={binary}",
        "data.source=manifest data.manifest={missing}",
        "model.in_channels=3",
        "model.num_heads=-2",
        "out={config}",
        "export={config}",
        "defaults.frames=0",
        "text_drop=.nan",
        "cond_noise=1",
    ],
}


def _overrides(box: Box, config: Path, text: str) -> list[str]:
    subst = {"{missing}": str(box.inp / "nope"), "{binary}": str(box.put("bin.dat", data=_garbage())),
             "{config}": str(config)}  # fmt: skip
    for k, v in subst.items():
        text = text.replace(k, v)
    return text.split(" ")


@pytest.mark.parametrize("task,override", [(t, o) for t, os_ in TRAIN_OVERRIDES.items() for o in os_])
def test_train_bad_override(box, task, override):
    config = tiny_train_config(box, task)
    box.error(["train", config, *_overrides(box, config, override)], timeout=240)
    assert not (box.cwd / "pwned").exists()


@NO_CUDA
@pytest.mark.parametrize("task", ["vae", "dit"])
def test_train_on_cuda_without_cuda(box, task):
    config = tiny_train_config(box, task)
    override = "device=cuda" if task == "dit" else "nope_device=cuda"
    box.error(["train", config, override], timeout=240)


HUGE_TRAIN = {
    "vae": ["model.base_channels=1000000", "video_frames=1000000001", "batch_size=1000000000",
            "data.height=100000 data.width=100000"],
    "dit": ["model.num_layers=1000000", "model.num_heads=100000", "batch_size=1000000000"],
}  # fmt: skip


@pytest.mark.parametrize("task,override", [(t, o) for t, os_ in HUGE_TRAIN.items() for o in os_])
def test_train_huge_sizes_are_refused(box, task, override):
    config = tiny_train_config(box, task)
    box.error(["train", config, *override.split(" ")], timeout=HUGE_TIMEOUT, memory_gib=3)


INIT_BREAKS = [
    "weights_link",
    "config_link_canary",
    "weights_truncated",
    "config_types",
    "weights_pickle_only",
]


@pytest.mark.parametrize("task,key", [("vae", "init"), ("dit", "vae")])
@pytest.mark.parametrize("brk", INIT_BREAKS)
def test_train_from_a_broken_vae_folder(box, assets, task, key, brk):
    """A VAE folder to start from (init=) or to train on (the DiT's vae=): the same checks as loading one."""
    vae = box.put("vae", assets.vae)
    VAE_BREAKS[brk](vae, box)
    config = tiny_train_config(box, task)
    err = box.error(["train", config, f"{key}={vae}"], timeout=240)
    assert CANARY.decode() not in err


@pytest.mark.parametrize("kind", ["weights_link", "extra_link", "json_link", "legacy_link"])
def test_train_resume_reads_nothing_outside_the_run(box, kind):
    """A file of the newest checkpoint a symlink out of the run folder (to an identical copy of one), or an
    extra such file the manifest does not list: the resume must not read through it (it falls back to the
    checkpoint before, or stops with one line)."""
    config = tiny_train_config(box, "vae")
    res, _ = box.call(["train", config, "save_every=1", "keep=3"], timeout=240)
    assert res.code == 0, str(res)
    latest = sorted((box.out / "run" / "ckpt").glob("step_*"))[-1]
    if kind == "weights_link":
        outside_link(box, latest / "model.safetensors", "model.safetensors", latest / "model.safetensors")
    elif kind == "extra_link":
        shutil.copyfile(latest / "model.safetensors", box.outside / "extra.safetensors")
        (latest / "extra.safetensors").symlink_to(box.outside / "extra.safetensors")
    elif kind == "json_link":
        outside_link(box, latest / "trainer.json", "trainer.json", latest / "trainer.json")
    else:  # the format before manifests (trainer.json + *.pt), a .pt of it linked out
        (latest / "MANIFEST.json").unlink()
        torch.save({"state": {}}, box.outside / "extra.pt")
        (latest / "extra.pt").symlink_to(box.outside / "extra.pt")
    res, events = box.call(["train", config, "save_every=1", "keep=3", "steps=3"], timeout=240)
    box._touched(events, res)
    if res.code != 0:
        assert_one_line_error(res)


# ----------------------------------------------------------------------------- curate


def curate(box: Box, assets: Assets, *extra, inputs=None) -> list:
    inputs = inputs if inputs is not None else [box.put("v.mp4", assets.video)]
    return ["curate", *inputs, "-o", box.out / "c", "--no-progress", "--steps", "probe", *extra]


CURATE_ERRORS = [
    ["--workers", "0"],
    ["--workers", "-1"],
    ["--workers", "x"],
    ["--shard", "x"],
    ["--shard", "3/2"],
    ["--shard", "-1/2"],
    ["--shard", "0/0"],
    ["--shard", "1/1"],
    ["--steps", "probe,nope"],
    ["--set", "nope=1"],
    ["--set", "motion.min_flow_top5=abc"],
    ["--set", "noequals"],
    ["--set", "split.min_seconds=.nan"],
    ["--set", "x=!!python/object/apply:os.system ['touch pwned']"],
]


@pytest.mark.parametrize("extra", CURATE_ERRORS, ids=" ".join)
def test_curate_bad_options(box, assets, extra):
    box.error(curate(box, assets, *extra))
    assert not (box.cwd / "pwned").exists()


@pytest.mark.parametrize("kind", ["binary", "python_tag", "list", "unknown_key", "mp4", "missing"])
def test_curate_bad_config(box, assets, kind):
    if kind == "mp4":
        config = box.put("c.yaml", assets.video)
    elif kind == "missing":
        config = box.inp / "nope.yaml"
    else:
        config = box.put("c.yaml", data=CONFIG_FILES.get(kind, b"nope: 1\n"))
    box.error(curate(box, assets, "--config", config))
    assert not (box.cwd / "pwned").exists()


def test_curate_needs_inputs(box, assets):
    box.error(curate(box, assets, inputs=[]))


def test_curate_output_is_a_file_or_an_input(box, assets):
    video = box.put("v.mp4", assets.video)
    argv = curate(box, assets, inputs=[video])
    argv[argv.index("-o") + 1] = video
    box.error(argv)
    (box.out / "f.txt").write_text("a file\n")
    argv[argv.index("-o") + 1] = box.out / "f.txt"
    box.error(argv)


def test_curate_records_unreadable_videos_and_succeeds(box, assets):
    """Bad media among the inputs is valid input for curate: listed in errors.jsonl, the run succeeds."""
    bad = [box.put("bad.mp4", data=_garbage()), box.put("text.mp4", data="not a video\n")]
    good = box.put("v.mp4", assets.video)
    box.ok(curate(box, assets, inputs=[*bad, good]))
    errors = [json.loads(line) for line in (box.out / "c" / "errors.jsonl").read_text().splitlines()]
    assert {Path(e["source"]).name for e in errors} >= {"bad.mp4", "text.mp4"}


@pytest.mark.parametrize(
    "kind", ["no_stamp", "binary_stamp", "list_stamp", "out_is_shard", "binary_manifest"]
)
def test_curate_merge_bad_shards(box, assets, kind):
    video = box.put("v.mp4", assets.video)
    shards = [box.out / "s0", box.out / "s1"]
    for i, s in enumerate(shards):
        argv = ["curate", video, "-o", s, "--no-progress", "--steps", "probe", "--shard", f"{i}/2"]
        res, _ = box.call(argv)
        assert res.code == 0, str(res)
    out = box.out / "merged"
    if kind == "no_stamp":
        (shards[0] / "curate.json").unlink()
    elif kind == "binary_stamp":
        (shards[0] / "curate.json").write_bytes(_garbage())
    elif kind == "list_stamp":
        (shards[0] / "curate.json").write_text("[]")
    elif kind == "out_is_shard":
        out = shards[1]
    elif kind == "binary_manifest":
        (shards[0] / "manifest.jsonl").write_bytes(_garbage())
    box.error(["curate", "--merge", *shards, "-o", out])


@pytest.fixture(scope="module")
def pickled_classifier(tmp_path_factory) -> Path:
    """A tiny transformers image classifier folder whose weights are only a pickle (pytorch_model.bin)."""
    from transformers import CLIPImageProcessor, ViTConfig, ViTForImageClassification

    folder = tmp_path_factory.mktemp("fuzz-vit") / "vit"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
        vit = ViTForImageClassification(
            ViTConfig(
                **small, image_size=32, patch_size=8, num_labels=2, id2label={0: "clean", 1: "watermark"}
            )
        )
    vit.config.save_pretrained(folder)
    torch.save(vit.state_dict(), folder / "pytorch_model.bin")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def test_curate_model_plugins_load_no_pickles(box, assets, pickled_classifier):
    """A curate model step's folder with only pytorch_model.bin: refused (safetensors only), before curate
    writes anything."""
    plugin = box.put("vit", pickled_classifier)
    box.error(curate(box, assets, "--steps", "probe,watermark", "--set", f"plugins.watermark={plugin}"),
              needle="safetensors")  # fmt: skip


# ----------------------------------------------------------------------------- data shapes

DATA_ERRORS = [
    ["-n", "0"],
    ["-n", "-3"],
    ["--frames", "0"],
    ["--frames", "-1"],
    ["--quality", "99"],
    ["--quality", "-1"],
    ["--workers", "0"],
    ["--workers", "-1"],
    ["--objects", "3"],
    ["--objects", "0"],
    ["--colors", "pink"],
    ["--shapes", "nope"],
    ["--sizes", "huge"],
    ["--backgrounds", "nope"],
    ["--motions", "dancing"],
    ["--held-out-only", "--colors", "red", "--shapes", "circle", "--objects", "1", "--sizes", "large"],
]


@pytest.mark.parametrize("extra", DATA_ERRORS, ids=" ".join)
def test_data_shapes_bad_options(box, extra):
    argv = ["data", "shapes", "-n", "2", "--frames", "5", "-o", box.out / "d", *extra]
    box.error(argv)


@pytest.mark.parametrize("extra", [["--frames", "1000000000"], ["-n", str(HUGE)]], ids=" ".join)
def test_data_shapes_huge_sizes_are_refused(box, extra):
    box.error(["data", "shapes", "-n", "1", "-o", box.out / "d", *extra], timeout=HUGE_TIMEOUT, memory_gib=3)


def test_data_shapes_refuses_a_folder_of_another_command(box, assets):
    """A curate output folder (its manifest) and a pipeline folder are not overwritten."""
    res, _ = box.call(curate(box, assets))
    assert res.code == 0, str(res)
    box.error(["data", "shapes", "-n", "1", "--frames", "5", "-o", box.out / "c"])
    pipe = box.out / "pipe"
    shutil.copytree(assets.pipe, pipe)
    box.error(["data", "shapes", "-n", "1", "--frames", "5", "-o", pipe])
    box.error(["data", "shapes", "-n", "1", "--frames", "5", "-o", box.put("f.txt", data="x")])


def test_data_shapes_bad_settings_leave_nothing_for_a_rerun(box):
    box.error(["data", "shapes", "-n", "1", "--frames", "5", "--quality", "99", "-o", box.out / "d"])
    box.ok(["data", "shapes", "-n", "1", "--frames", "5", "-o", box.out / "d"])


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999"])
def test_data_shapes_any_integer_seed(box, seed):
    res, _ = box.call(["data", "shapes", "-n", "1", "--frames", "1", "--seed", seed, "-o", box.out / "d"])
    if res.code != 0:
        assert_one_line_error(res, "seed")
        assert not (box.out / "d").exists(), str(res)


# ----------------------------------------------------------------------------- eval shapes


@pytest.mark.parametrize("kind", ["garbage", "text", "missing", "folder", "png"])
def test_eval_shapes_bad_video(box, assets, kind):
    video = box.inp / "v.mp4"
    if kind == "garbage":
        video.write_bytes(_garbage())
    elif kind == "text":
        video.write_text("not a video\n")
    elif kind == "folder":
        video.mkdir()
    elif kind == "png":
        video.write_bytes(_png()[:80])
    box.error(["eval", "shapes", video, "--prompt", assets.caption])


MANIFESTS = {
    "binary": _garbage(),
    "array": b"[1, 2]\n",
    "no_caption": b'{"path": "v.mp4"}\n',
    "path_types": b'{"path": 3, "caption": "x"}\n',
    "missing_video": b'{"path": "nope.mp4", "caption": "a large red circle staying still"}\n',
    "bad_video": b'{"path": "bad.mp4", "caption": "a large red circle staying still"}\n',
    "bad_caption": b'{"path": "v.mp4", "caption": "a purple hexagon"}\n',
    "caption_type": b'{"path": "v.mp4", "caption": [1]}\n',
}


@pytest.mark.parametrize("kind", MANIFESTS)
def test_eval_shapes_bad_manifest(box, assets, kind):
    box.put("v.mp4", assets.video)
    box.put("bad.mp4", data=_garbage())
    manifest = box.put("m.jsonl", data=MANIFESTS[kind])
    box.error(["eval", "shapes", "--manifest", manifest], progress=True)


def test_eval_shapes_error_after_progress_has_its_own_line(box, assets):
    box.put("v.mp4", assets.video)
    box.put("bad.mp4", data=_garbage())
    good = json.dumps({"path": "v.mp4", "caption": assets.caption})
    manifest = box.put(
        "m.jsonl", data=f"{good}\n{good}\n" + json.dumps({"path": "bad.mp4", "caption": assets.caption})
    )
    box.error(["eval", "shapes", "--manifest", manifest], progress=True)


@pytest.mark.parametrize("kind", ["results_is_manifest", "results_is_video", "results_is_folder", "limit_0",
                                  "limit_neg", "both", "prompt_unknown"])  # fmt: skip
def test_eval_shapes_bad_options(box, assets, kind):
    video = box.put("v.mp4", assets.video)
    manifest = box.put("m.jsonl", data=json.dumps({"path": "v.mp4", "caption": assets.caption}) + "\n")
    argv = {
        "results_is_manifest": ["--manifest", manifest, "--results", manifest],
        "results_is_video": ["--manifest", manifest, "--results", video],
        "results_is_folder": ["--manifest", manifest, "--results", box.out],
        "limit_0": ["--manifest", manifest, "--limit", "0"],
        "limit_neg": ["--manifest", manifest, "--limit", "-1"],
        "both": [video, "--manifest", manifest],
        "prompt_unknown": [video, "--prompt", "a purple hexagon dancing"],
    }[kind]
    box.error(["eval", "shapes", *argv])


def test_eval_shapes_valid(box, assets):
    video = box.put("v.mp4", assets.video)
    res = json.loads(box.ok(["eval", "shapes", video, "--prompt", assets.caption]))
    assert res["caption"] == assets.caption
    manifest = box.put("m.jsonl", data=json.dumps({"path": "v.mp4", "caption": assets.caption}) + "\n")
    box.ok(["eval", "shapes", "--manifest", manifest, "--results", box.out / "r.jsonl"])
    assert (box.out / "r.jsonl").is_file()


# ----------------------------------------------------------------------------- eval recon, bench vae


def vae_cmd(box: Box, assets: Assets, cmd: str, *extra, model: Path | None = None) -> list:
    model = model if model is not None else box.put("vae", assets.vae)
    base = ["eval", "recon", "--num", "1", "--frames", "1"] if cmd == "recon" else \
        ["bench", "vae", "--frames", "1", "--height", "48", "--width", "48"]  # fmt: skip
    return [*base, "--model", model, "--json", *extra]


VAE_ERRORS = {
    "recon": [["--num", "0"], ["--num", "-1"], ["--frames", "10"], ["--frames", "0"], ["--frames", "-3"]],
    "bench": [["--device", "tpu"], ["--device", ""], ["--device", "cpu:99"], ["--height", "0"],
              ["--height", "-64"], ["--width", "17"], ["--frames", "0"], ["--frames", "-1"]],
}  # fmt: skip

VAE_HUGE = {
    "recon": [["--frames", "1000000001"], ["--num", str(HUGE)]],
    "bench": [["--height", "100000"], ["--frames", "1000000001"], ["--height", "40000", "--width", "40000"]],
}


@pytest.mark.parametrize(
    "cmd,extra",
    [(c, e) for c, es in VAE_ERRORS.items() for e in es],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_vae_commands_bad_options(box, assets, cmd, extra):
    box.error(vae_cmd(box, assets, cmd, *extra))


@NO_CUDA
def test_bench_vae_cuda_without_cuda(box, assets):
    box.error(vae_cmd(box, assets, "bench", "--device", "cuda"))


@pytest.mark.parametrize(
    "cmd,extra",
    [(c, e) for c, es in VAE_HUGE.items() for e in es],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_vae_commands_huge_sizes_are_refused(box, assets, cmd, extra):
    box.error(vae_cmd(box, assets, cmd, *extra), timeout=HUGE_TIMEOUT, memory_gib=3)


VAE_BREAKS = {
    "config_binary": lambda v, b: (v / "config.json").write_bytes(_garbage()),
    "config_types": lambda v, b: edit_json(v / "config.json", channel_mult="1,2"),
    "config_list_types": lambda v, b: edit_json(v / "config.json", channel_mult=["a", "b", "c", "d"]),
    "config_float": lambda v, b: edit_json(v / "config.json", base_channels=8.5),
    "config_null": lambda v, b: edit_json(v / "config.json", norm_groups=None),
    "config_negative": lambda v, b: edit_json(v / "config.json", num_res_blocks=-1),
    "config_groups": lambda v, b: edit_json(v / "config.json", norm_groups=3),
    "config_scaling_nan": lambda v, b: edit_json(v / "config.json", scaling_factor=float("nan")),
    "config_mismatch": lambda v, b: edit_json(v / "config.json", latent_channels=8),
    "weights_truncated": lambda v, b: truncate(v / "model.safetensors"),
    "weights_header_only": lambda v, b: truncate(v / "model.safetensors", 0.01),
    "weights_empty": lambda v, b: (v / "model.safetensors").write_bytes(b""),
    "weights_extra": lambda v, b: save_file(
        {**load_file(v / "model.safetensors"), "extra": torch.zeros(2)}, v / "model.safetensors"
    ),
    "weights_dtype": lambda v, b: save_file(
        {k: t.to(torch.int32) for k, t in load_file(v / "model.safetensors").items()}, v / "model.safetensors"
    ),
    "weights_pickle_only": lambda v, b: _bin_state_dict(v),
    "weights_link": lambda v, b: outside_link(
        b, v / "model.safetensors", "w.safetensors", v / "model.safetensors"
    ),
    "config_link_canary": lambda v, b: outside_link(b, v / "config.json", "secret.txt"),
}


@pytest.mark.parametrize("cmd", ["recon", "bench"])
@pytest.mark.parametrize("brk", VAE_BREAKS)
def test_vae_commands_broken_vae_folder(box, assets, cmd, brk):
    vae = box.put("vae", assets.vae)
    VAE_BREAKS[brk](vae, box)
    err = box.error(vae_cmd(box, assets, cmd, model=vae))
    assert CANARY.decode() not in err


@pytest.mark.parametrize("cmd", ["recon", "bench"])
def test_vae_commands_valid(box, assets, cmd):
    res = json.loads(box.ok(vae_cmd(box, assets, cmd)).strip().splitlines()[-1])
    assert isinstance(res, dict)


@pytest.mark.parametrize("seed", ["-1", "99999999999999999999999"])
def test_eval_recon_any_integer_seed(box, assets, seed):
    res, _ = box.call(vae_cmd(box, assets, "recon", "--seed", seed))
    if res.code != 0:
        assert_one_line_error(res, "seed")


# ----------------------------------------------------------------------------- convert

try:
    from seed_fixtures import has_fixture, load_fixture
except ImportError:  # pragma: no cover
    has_fixture = None


@pytest.fixture(scope="module")
def osp(tmp_path_factory) -> Path:
    """An OSP v1.2 source: transformer/ (the parity fixture, diffusers' names) + text_encoder/ + tokenizer/
    (the tiny T5 at the fixture's caption width); no VAE (convert lists it as missing)."""
    if has_fixture is None or not has_fixture("osp_v1_2_dit"):
        pytest.skip("the osp_v1_2_dit parity fixture is not here (set LONGVIDEO_FIXTURES)")
    from longvideo.pipelines.tiny import tiny_text_encoder

    meta, sd, _ = load_fixture("osp_v1_2_dit")
    root = tmp_path_factory.mktemp("fuzz-osp") / "osp"
    (root / "transformer").mkdir(parents=True)
    cfg = {"_class_name": "OpenSoraT2V", "_diffusers_version": "0.28.0", **meta["config"]}
    (root / "transformer" / "config.json").write_text(json.dumps(cfg))
    save_file(sd, root / "transformer" / "diffusion_pytorch_model.safetensors")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        tiny_text_encoder(dim=meta["config"]["caption_channels"]).save_pretrained(root)
    return root


def convert(src, dst, *extra) -> list:
    return ["convert", "--from", "osp-v1.2", src, dst, *extra]


def _shard(src: Path, names: list[str]) -> None:
    """Split the transformer's weights into shards named `names` (relative to transformer/) + an index."""
    t = src / "transformer"
    sd = load_file(t / "diffusion_pytorch_model.safetensors")
    (t / "diffusion_pytorch_model.safetensors").unlink()
    keys = sorted(sd)
    weight_map = {}
    for i, name in enumerate(names):
        part = keys[i :: len(names)]
        target = (t / name).resolve() if not os.path.isabs(name) else Path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: sd[k] for k in part}, target)
        weight_map.update(dict.fromkeys(part, name))
    (t / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


CONVERT_BREAKS = {
    "config_binary": lambda s, b: (s / "transformer" / "config.json").write_bytes(_garbage()),
    "config_types": lambda s, b: edit_json(s / "transformer" / "config.json", num_layers="two"),
    "config_negative": lambda s, b: edit_json(s / "transformer" / "config.json", num_attention_heads=-1),
    "weights_truncated": lambda s, b: truncate(s / "transformer" / "diffusion_pytorch_model.safetensors"),
    "weights_garbage": lambda s, b: (s / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(
        _garbage()
    ),
    "weights_link_outside": lambda s, b: outside_link(
        b,
        s / "transformer" / "diffusion_pytorch_model.safetensors",
        "w.safetensors",
        s / "transformer" / "diffusion_pytorch_model.safetensors",
    ),
    "transformer_folder_link": lambda s, b: outside_link(
        b, s / "transformer", "transformer", s / "transformer"
    ),
    "shard_dotdot": lambda s, b: _shard(s, ["a.safetensors", "../../outside/b.safetensors"]),
    "shard_absolute": lambda s, b: _shard(s, ["a.safetensors", str(b.outside / "b.safetensors")]),
    "shard_link": lambda s, b: (
        _shard(s, ["a.safetensors", "b.safetensors"]),
        outside_link(
            b, s / "transformer" / "b.safetensors", "b.safetensors", s / "transformer" / "b.safetensors"
        ),
    ),
    "shard_missing": lambda s, b: (
        _shard(s, ["a.safetensors", "b.safetensors"]),
        (s / "transformer" / "b.safetensors").unlink(),
    ),
    "index_binary": lambda s, b: (
        _shard(s, ["a.safetensors"]),
        (s / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_bytes(_garbage()),
    ),
    "text_encoder_weights_link": lambda s, b: outside_link(
        b,
        s / "text_encoder" / "model.safetensors",
        "te.safetensors",
        s / "text_encoder" / "model.safetensors",
    ),
    "text_encoder_pickle_only": lambda s, b: _bin_state_dict(s / "text_encoder"),
    "text_encoder_config_binary": lambda s, b: (s / "text_encoder" / "config.json").write_bytes(_garbage()),
    "tokenizer_folder_link": lambda s, b: outside_link(b, s / "tokenizer", "tokenizer", s / "tokenizer"),
}

HUGE_CONVERT = {
    "layers_huge": lambda s, b: edit_json(s / "transformer" / "config.json", num_layers=10**6),
    "heads_huge": lambda s, b: edit_json(s / "transformer" / "config.json", num_attention_heads=10**5),
}


@pytest.mark.parametrize("brk", CONVERT_BREAKS)
def test_convert_broken_source(box, osp, brk):
    src = box.put("src", osp)
    CONVERT_BREAKS[brk](src, box)
    err = box.error(convert(src, box.out / "dst"))
    assert CANARY.decode() not in err


@pytest.mark.parametrize("brk", HUGE_CONVERT)
def test_convert_huge_source_is_refused(box, osp, brk):
    src = box.put("src", osp)
    HUGE_CONVERT[brk](src, box)
    box.error(convert(src, box.out / "dst"), timeout=HUGE_TIMEOUT, memory_gib=3)


def test_convert_a_malicious_pickle_runs_nothing(box, osp):
    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {box.root / 'pwned'}",))

    src = box.put("src", osp)
    (src / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    (src / "transformer" / "model.pt").write_bytes(pickle.dumps({"state_dict": Boom()}, protocol=2))
    box.error(convert(src, box.out / "dst"), needle="weights_only")
    assert not (box.root / "pwned").exists()


@pytest.mark.parametrize("kind", ["same", "inside", "non_empty", "file", "pipeline", "parent_missing_file"])
def test_convert_refuses_a_destination_it_would_destroy(box, osp, assets, kind):
    src = box.put("src", osp)
    dst = {"same": src, "inside": src / "sub", "non_empty": box.out / "d", "file": box.out / "f.txt",
           "pipeline": box.out / "pipe", "parent_missing_file": box.out / "f.txt" / "d"}[kind]  # fmt: skip
    if kind == "non_empty":
        dst.mkdir()
        (dst / "notes.txt").write_text("keep me\n")
    elif kind in ("file", "parent_missing_file"):
        (box.out / "f.txt").write_text("keep me\n")
    elif kind == "pipeline":
        shutil.copytree(assets.pipe, dst)
    box.error(convert(src, dst))


def test_convert_overwrites_a_pipeline_folder_only_when_told(box, osp, assets):
    src = box.put("src", osp)
    dst = box.out / "pipe"
    shutil.copytree(assets.pipe, dst)
    box.error(convert(src, dst))
    box.ok(convert(src, dst, "--overwrite"))
    assert json.loads((dst / "model_index.json").read_text())["_converted_from"]["format"] == "osp-v1.2"


def test_convert_copies_nothing_from_outside_the_source(box, osp):
    """A stray symlink in the text encoder folder (to the canary) is refused, or not copied: either way the
    canary's text is in no output (Box.ok checks every written file)."""
    src = box.put("src", osp)
    (src / "text_encoder" / "stolen.txt").symlink_to(box.secret)
    (src / "tokenizer" / "notes").mkdir()
    (src / "tokenizer" / "notes" / "stolen.json").symlink_to(box.secret)
    dst = box.out / "dst"
    res, events = box.call(convert(src, dst))
    if res.code == 0:
        box._touched(events, res)
        for p in dst.rglob("*"):
            assert not p.is_symlink() and (not p.is_file() or CANARY not in p.read_bytes()), p
    else:
        assert_one_line_error(res)
        box._touched(events, res)
        assert not dst.exists()


@pytest.mark.parametrize("kind", ["src_missing", "src_binary_file", "vae_missing", "vae_file", "text_missing",
                                  "text_binary"])  # fmt: skip
def test_convert_bad_paths(box, osp, kind):
    src = box.put("src", osp)
    binary = box.put("b.safetensors", data=_garbage())
    argv = {
        "src_missing": convert(box.inp / "nope", box.out / "d"),
        "src_binary_file": convert(binary, box.out / "d"),
        "vae_missing": convert(src, box.out / "d", "--vae", box.inp / "nope"),
        "vae_file": convert(src, box.out / "d", "--vae", binary),
        "text_missing": convert(src, box.out / "d", "--text-encoder", box.inp / "nope"),
        "text_binary": convert(src, box.out / "d", "--text-encoder", binary),
    }[kind]
    box.error(argv)


def test_convert_valid_source(box, osp):
    dst = box.out / "dst"
    summary = json.loads(box.ok(convert(box.put("src", osp), dst)).strip().splitlines()[-1])
    assert "transformer" in summary["written"] and (dst / "model_index.json").is_file()


# ----------------------------------------------------------------------------- hypothesis: drawn inputs

# (command prefix, option, the first valid value): every integer below it is refused
LOWER_BOUNDS = [
    (["data", "shapes", "-n", "1", "--frames", "1", "-o", "{out}/d"], "-n", 1),
    (["data", "shapes", "-n", "1", "--frames", "1", "-o", "{out}/d"], "--frames", 1),
    (["data", "shapes", "-n", "1", "--frames", "1", "-o", "{out}/d"], "--workers", 1),
    (["data", "shapes", "-n", "1", "--frames", "1", "-o", "{out}/d"], "--quality", 0),
    (["eval", "recon", "--model", "{vae}"], "--num", 1),
    (["eval", "recon", "--model", "{vae}"], "--frames", 1),
    (["eval", "recon", "--model", "{vae}"], "--chunk", 0),
    (["bench", "vae", "--model", "{vae}"], "--frames", 1),
    (["bench", "vae", "--model", "{vae}"], "--height", 1),
    (["bench", "vae", "--model", "{vae}"], "--width", 1),
    (["bench", "vae", "--model", "{vae}"], "--chunk", 0),
    (["curate", "{in}/v.mp4", "-o", "{out}/c", "--steps", "probe"], "--workers", 1),
    (["generate", PROMPT, "--model", "{pipe}", "-o", "{out}/v.mp4"], "--frames", 1),
    (["generate", PROMPT, "--model", "{pipe}", "-o", "{out}/v.mp4"], "--window", 1),
    (["generate", PROMPT, "--model", "{pipe}", "-o", "{out}/v.mp4"], "--steps", 1),
    (["generate", PROMPT, "--model", "{pipe}", "-o", "{out}/v.mp4"], "--height", 1),
    (["generate", PROMPT, "--model", "{pipe}", "-o", "{out}/v.mp4"], "--overlap", 0),
]


def _fill(box: Box, assets: Assets, argv: list) -> list[str]:
    needs = " ".join(map(str, argv))
    subst = {"{out}": str(box.out), "{in}": str(box.inp)}
    if "{vae}" in needs:
        subst["{vae}"] = str(box.put("vae", assets.vae))
    if "{pipe}" in needs:
        subst["{pipe}"] = str(box.put("pipe", assets.pipe))
    if "{in}/v.mp4" in needs:
        box.put("v.mp4", assets.video)
    out = []
    for a in map(str, argv):
        for k, v in subst.items():
            a = a.replace(k, v)
        out.append(a)
    return out


@settings(FUZZ, max_examples=40)
@given(case=st.sampled_from(LOWER_BOUNDS), below=st.integers(min_value=1, max_value=10**30), data=st.data())
def test_fuzz_integers_below_range(capfd, assets, case, below, data):
    prefix, option, low = case
    with sandbox(capfd) as box:
        box.error([*_fill(box, assets, prefix), option, str(low - below)])


NON_INTEGERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Nd"]), min_size=1, max_size=20),
    st.just("0x10"),
)


@settings(FUZZ, max_examples=25)
@given(case=st.sampled_from(LOWER_BOUNDS), value=NON_INTEGERS)
def test_fuzz_non_integers(capfd, assets, case, value):
    prefix, option, _ = case
    with sandbox(capfd) as box:
        box.error([*_fill(box, assets, prefix), option, value])


BAD_FLOATS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999"]), st.floats(max_value=-1e-9).map(repr)
)


@settings(FUZZ, max_examples=15)
@given(option=st.sampled_from(["--guidance", "--cond-noise"]), value=BAD_FLOATS)
def test_fuzz_bad_floats_for_generate(capfd, assets, option, value):
    if option == "--guidance" and value not in ("nan", "inf", "-inf", "NaN", "1e999"):
        value = "nan"  # a negative guidance scale is a (strange) valid value; non-finite ones are not
    with sandbox(capfd) as box:
        box.error(gen(box, assets, option, value))


@settings(FUZZ, max_examples=15)
@given(key=st.sampled_from(["lr", "kl_weight", "grad_clip", "ema_decay", "min_lr_ratio"]),
       value=st.sampled_from([".nan", ".inf", "-.inf", "-1", "-1e-3"]))  # fmt: skip
def test_fuzz_bad_floats_for_train(capfd, key, value):
    with sandbox(capfd) as box:
        box.error(["train", tiny_train_config(box, "vae"), f"{key}={value}"])


BINARY = st.binary(min_size=0, max_size=300).map(lambda b: b"\x00" + b + b"\xff")
TEXT_TARGETS = ["train_config", "curate_config", "manifest", "image", "video", "model_index", "vae_config",
                "scheduler", "text_encoder_config", "tokenizer"]  # fmt: skip


@settings(FUZZ, max_examples=40)
@given(target=st.sampled_from(TEXT_TARGETS), blob=BINARY)
def test_fuzz_binary_where_text_is_expected(capfd, assets, target, blob):
    with sandbox(capfd) as box:
        f = box.put("f.bin", data=blob)
        if target == "train_config":
            argv = ["train", f]
        elif target == "curate_config":
            argv = curate(box, assets, "--config", f)
        elif target == "manifest":
            argv = ["eval", "shapes", "--manifest", f]
        elif target == "image":
            argv = gen(box, assets, "--image", f)
        elif target == "video":
            argv = ["eval", "shapes", f, "--prompt", assets.caption]
        elif target == "vae_config":
            vae = box.put("vae", assets.vae)
            (vae / "config.json").write_bytes(blob)
            argv = vae_cmd(box, assets, "recon", model=vae)
        else:
            pipe = box.put("pipe", assets.pipe)
            where = {
                "model_index": "model_index.json",
                "scheduler": "scheduler/config.json",
                "text_encoder_config": "text_encoder/config.json",
                "tokenizer": "tokenizer/tokenizer.json",
            }
            (pipe / where[target]).write_bytes(blob)  # fmt: skip
            argv = gen(box, assets, "--frames", "1", "--steps", "1", model=pipe)
        box.error(argv)


VAE_INT_FIELDS = ["in_channels", "latent_channels", "base_channels", "num_res_blocks"]
NON_INT_FLOATS = st.floats(allow_nan=True, allow_infinity=True).filter(
    lambda x: not math.isfinite(x) or x != int(x)
)
WRONG_VALUES = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=9, max_value=10**6),
    st.text(max_size=8),
    NON_INT_FLOATS,
    st.lists(st.integers(), max_size=3),
    st.none(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(FUZZ, max_examples=30)
@given(field=st.sampled_from(VAE_INT_FIELDS), value=WRONG_VALUES)
def test_fuzz_vae_config_values(capfd, assets, field, value):
    """A VAE config.json whose shape fields are wrong (type or value) for its weights: always an error."""
    with sandbox(capfd) as box:
        vae = box.put("vae", assets.vae)
        edit_json(vae / "config.json", **{field: value})
        box.error(vae_cmd(box, assets, "recon", model=vae), timeout=HUGE_TIMEOUT, memory_gib=3)


@settings(FUZZ, max_examples=20)
@given(key=st.from_regex(r"\A[a-z][a-z_]{0,12}(\.[a-z_]{1,8})?\Z"), value=st.text(max_size=10))
def test_fuzz_unknown_override_keys(capfd, key, value):
    from longvideo.train.vae import VAETrainConfig

    known = {f for f in VAETrainConfig.__dataclass_fields__}
    if key.split(".")[0] in known:
        key = "zz_" + key
    with sandbox(capfd) as box:
        box.error(["train", tiny_train_config(box, "vae"), f"{key}={value}"])


DIT_SHAPE_FIELDS = [
    "in_channels",
    "cond_channels",
    "num_layers",
    "num_heads",
    "head_dim",
    "text_dim",
    "ff_mult",
]


@settings(FUZZ, max_examples=25)
@given(field=st.sampled_from(DIT_SHAPE_FIELDS), value=WRONG_VALUES)
def test_fuzz_transformer_config_values(capfd, assets, field, value):
    """A transformer config.json whose shape fields do not fit its weights (type or value): an error."""
    with sandbox(capfd) as box:
        pipe = box.put("pipe", assets.pipe)
        cfg = json.loads((pipe / "transformer" / "config.json").read_text())
        if value == cfg[field] and type(value) is type(cfg[field]):
            value = -1
        edit_json(pipe / "transformer" / "config.json", **{field: value})
        box.error(gen(box, assets, "--frames", "1", "--steps", "1", model=pipe), timeout=HUGE_TIMEOUT,
                  memory_gib=3)  # fmt: skip


NOT_A_COUNT = st.one_of(
    st.integers(max_value=0),
    st.text(max_size=5),
    st.none(),
    st.lists(st.integers(), max_size=2),
    NON_INT_FLOATS,
)
SAMPLERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m")
BAD_DEFAULTS = st.one_of(
    st.tuples(st.sampled_from(["frames", "height", "width", "steps"]), NOT_A_COUNT),
    st.tuples(st.just("guidance"), st.sampled_from([float("nan"), float("inf"), "3", None])),
    st.tuples(st.just("sampler"), st.text(max_size=8).filter(lambda x: x not in SAMPLERS) | st.integers()),
)


@settings(FUZZ, max_examples=25)
@given(change=BAD_DEFAULTS)
def test_fuzz_pipeline_defaults(capfd, assets, change):
    """scheduler/config.json's defaults (what generate uses when an option is not given), made bad."""
    field, value = change
    with sandbox(capfd) as box:
        pipe = box.put("pipe", assets.pipe)
        edit_json(pipe / "scheduler" / "config.json", **{f"defaults__{field}": value})
        box.error(gen(box, assets, model=pipe), timeout=HUGE_TIMEOUT, memory_gib=3)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)


@settings(FUZZ, max_examples=25)
@given(rows=st.lists(st.fixed_dictionaries({"path": JSON, "caption": JSON}) | JSON, min_size=1, max_size=3))
def test_fuzz_manifest_rows(capfd, assets, rows):
    """A manifest whose rows are any JSON (never a readable video with its shapes-world caption)."""
    with sandbox(capfd) as box:
        box.put("v.mp4", assets.video)
        manifest = box.put("m.jsonl", data="".join(json.dumps(r) + "\n" for r in rows))
        box.error(["eval", "shapes", "--manifest", manifest], progress=True)
