"""What commands write, and the processes they start: nothing of the user's is lost, nothing is left behind.

- `check_not_input`: an output that is one of the command's inputs (the same file, symlinks resolved) is
  refused; `check_folder_for`: a folder holding another command's outputs is not written into.
- Temp files are named `.NAME.PID.tmp[.EXT]` next to their target (`temp_path`); `sweep_temps` removes
  those of processes that are gone (a killed run), so a rerun cleans up after it.
- `command_guard` (around every CLI command): SIGTERM unwinds the command like an exception, so `finally`
  blocks and context managers remove temp files; progress bars left open by an error are closed first, so
  the error line starts a line of its own.
- `worker_init` / `worker_task` / `stop_pool`: worker processes die with their parent (also a parent killed
  with SIGKILL), and a parent that stops (Ctrl-C, SIGTERM, an error) stops its workers at once; a worker
  stopped mid-task runs the task's cleanups first.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from longvideo.errors import UserError

# ----------------------------------------------------------------------------- outputs that are inputs


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether paths `a` and `b` name one file: symlinks resolved, hard links too when both exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one does not exist (yet): compare the resolved paths
        return os.path.realpath(a) == os.path.realpath(b)


def check_not_input(output: str | os.PathLike[str], what: str, inputs: dict[str, Any]) -> None:
    """UserError when `output` (`what`, e.g. "-o") is the same file as one of `inputs` ({"the --image
    file": path}; None paths skipped): a command never writes over what it reads."""
    for name, path in inputs.items():
        if path is not None and same_file(output, path):
            raise UserError(f"{what} {os.fspath(output)} is {name}, an input; write the output elsewhere")


# Files that say which command made a folder: a command writes only into a new or empty folder, or one
# holding its own marker (then it resumes or refuses other settings itself).
FOLDER_MARKERS = {
    "shapes.json": "a shapes dataset (longvideo data shapes)",
    "curate.json": "a curation (longvideo curate)",
    "model_index.json": "a pipeline folder",
    "trainer.json": "a training run",
}


def check_folder_for(folder: str | os.PathLike[str], marker: str, command: str) -> None:
    """UserError unless `folder` is missing, empty, or holds `marker` (the folder is `command`'s own): a
    folder with another command's outputs (or any other files) is not written into. Hidden files (temp
    files, locks) do not count."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{command}: output folder {folder} is a file")
    if not folder.is_dir() or (folder / marker).exists():
        return
    try:
        names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    except OSError as e:
        raise UserError(f"{command}: cannot read output folder {folder}: {e.strerror or e}") from None
    if not names:
        return
    holds = next((FOLDER_MARKERS[n] for n in names if n in FOLDER_MARKERS), None)
    what = f"holds {holds}" if holds else f"is not empty ({names[0]}{', ...' if len(names) > 1 else ''})"
    raise UserError(f"{command}: output folder {folder} {what}; use a new or empty folder")


# ----------------------------------------------------------------------------- temp files

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.tmp(?P<ext>\.[A-Za-z0-9]+)?$")


def temp_path(path: str | os.PathLike[str]) -> str:
    """The hidden temp file of `path` for this process: DIR/.NAME.PID.tmp[.EXT] (the extension kept, so a
    muxer or a reader that goes by it still knows the format)."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    ext = os.path.splitext(name)[1]
    ext = ext if re.fullmatch(r"\.[A-Za-z0-9]+", ext) else ""
    return os.path.join(folder, f".{name}.{os.getpid()}.tmp{ext}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process: alive; an absurd pid: not ours
        return True
    return True


def sweep_temps(folder: str | os.PathLike[str], name: str | None = None, recursive: bool = False) -> int:
    """Remove the temp files (`temp_path`) in `folder` whose process is gone: what a killed run left.
    `name`: only those of that target file. Returns how many were removed."""
    if os.name != "posix":  # why: os.kill(pid, 0) is no liveness test elsewhere
        return 0
    removed = 0
    walk = os.walk(folder) if recursive else [(os.fspath(folder), [], None)]
    for root, _, files in walk:
        try:
            files = os.listdir(root) if files is None else files
        except OSError:
            continue
        for f in files:
            m = _TEMP.match(f)
            if m is None or (name is not None and m["name"] != name) or _alive(int(m["pid"])):
                continue
            with contextlib.suppress(OSError):
                os.remove(os.path.join(root, f))
                removed += 1
    return removed


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` through its temp file: readers see the old file or the new, never half."""
    tmp = temp_path(path)
    try:
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- the command's process

TERMINATED = 128 + signal.SIGTERM  # the exit status of a process ended by SIGTERM


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike[str], what: str) -> Iterator[None]:
    """One `what` (a curate run, a training run) writing to `folder` at a time: an flock on folder/.lock,
    released when the process ends however it ends; a second one is a one-line error."""
    import fcntl

    with open(Path(folder) / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(f"another {what} is writing to {folder} (its .lock is held)") from None
        yield


def _raise_exit(signum: int, frame: Any) -> None:
    # why: one SIGTERM unwinds; more during the cleanups must not cut them short
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def command_guard() -> Iterator[None]:
    """Around a command: SIGTERM raises SystemExit(143) (cleanups run, the exit status stays 143), and
    progress bars still open when it ends are closed (left showing where they stopped), so an error
    printed after it starts its own line."""
    # nested guards (cli.main's around a command's own): only the outermost installs and restores, so a
    # SIGTERM's SIG_IGN holds through every cleanup
    main = threading.current_thread() is threading.main_thread()
    installed = main and signal.getsignal(signal.SIGTERM) is not _raise_exit
    previous = signal.signal(signal.SIGTERM, _raise_exit) if installed else None
    try:
        yield
    finally:
        close_progress_bars()
        if installed:
            signal.signal(signal.SIGTERM, previous)


def close_progress_bars() -> None:
    """Close every tqdm bar still open, leaving it on screen followed by a newline."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):  # why: a bar half torn down must not hide the real error
            bar.leave = True
            bar.close()


# ----------------------------------------------------------------------------- worker processes

_IN_WORKER = False


def worker_init(parent: int) -> None:
    """Initializer of a worker process (ProcessPoolExecutor(initializer=worker_init, initargs=(pid,))):
    the worker ends when the process `parent` does, and SIGTERM (from `stop_pool`) unwinds its task."""
    global _IN_WORKER
    _IN_WORKER = True
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # why: Ctrl-C is the parent's to handle (it stops us)
    ppid = os.getppid()
    if ppid == parent and _die_with_parent_linux():
        if os.getppid() != parent:  # why: the parent died before the kernel was told
            os._exit(1)
        return
    # elsewhere, or started by a fork server (whose parent is `parent`): watch for either to go
    threading.Thread(target=_watch_parent, args=(parent, ppid), name="watch-parent", daemon=True).start()


def _die_with_parent_linux() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL): the kernel kills us when the parent's thread ends. Linux only."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, ppid: int) -> None:
    import time

    while os.getppid() == ppid and _alive(parent):
        time.sleep(0.5)
    os._exit(1)


@contextlib.contextmanager
def worker_task() -> Iterator[None]:
    """Around a task run in a worker: when SIGTERM stops it, the process exits once the task's cleanups
    have run (instead of going back to the queue for the next task). Outside a worker: nothing."""
    try:
        yield
    except SystemExit:
        if _IN_WORKER:
            os._exit(TERMINATED)
        raise


def stop_pool(pool: Any, grace: float = 10.0) -> None:
    """Stop a ProcessPoolExecutor now: queued tasks are dropped, the workers get SIGTERM (their tasks
    clean up and exit) and, after `grace` seconds, SIGKILL."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # why: no public API before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(grace)
            if p.is_alive():
                p.kill()
                p.join(grace)
    pool.shutdown(wait=True)
