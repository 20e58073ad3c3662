"""Confined reads and safe output folders (models/weights.py), issue #21: a model folder is untrusted, so
every file read from it must resolve inside the folder the user named (symlinks followed, `..` refused),
copies are no more readable than their source, and a folder we write replaces nothing until it is complete
(`AtomicFolder`: no output that is or holds an input, no non-empty folder without `overwrite`, and the
leftovers of a killed run swept by the next).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from longvideo.errors import UserError
from longvideo.models.weights import (
    MAX_JSON_BYTES,
    AtomicFolder,
    check_name,
    confine,
    copy_file,
    from_dict,
    read_json,
    read_weights,
)


def one_line_error(match: str, fn, *a, **kw) -> str:
    with pytest.raises(UserError, match=match) as e:
        fn(*a, **kw)
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """(root, a secret file outside it)."""
    root, secret = tmp_path / "model", tmp_path / "secret.txt"
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    secret.write_text('{"stolen": true}')
    return root, secret


def test_confine_follows_symlinks_and_refuses_what_leaves_the_root(tree):
    root, secret = tree
    assert confine(root / "config.json", root) == (root / "config.json").resolve()
    (root / "sub" / "inside.json").symlink_to(root / "config.json")  # a link within the folder is fine
    assert confine(root / "sub" / "inside.json", root) == (root / "config.json").resolve()
    (root / "stolen.json").symlink_to(secret)
    one_line_error(
        r"stolen\.json: resolves to .*secret\.txt, outside .*model", confine, root / "stolen.json", root
    )
    (root / "passwd").symlink_to("/etc/passwd")
    one_line_error("outside", confine, root / "passwd", root)
    one_line_error("outside", confine, root / ".." / "secret.txt", root)
    (root / "away").symlink_to(secret.parent, target_is_directory=True)  # a linked folder out of the root
    one_line_error("outside", confine, root / "away" / "secret.txt", root)
    # what reads a file goes through it: the secret's contents never come back
    one_line_error("outside", read_json, root / "stolen.json", root=root)


def test_a_named_root_may_itself_be_a_link(tree, tmp_path):
    root, _ = tree
    (tmp_path / "alias").symlink_to(root, target_is_directory=True)
    assert confine(tmp_path / "alias" / "config.json", tmp_path / "alias") == (root / "config.json").resolve()


def test_hugging_face_cache_snapshots_may_link_to_their_blobs(tmp_path):
    repo = tmp_path / "hub" / "models--org--t5"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    (snap / "tokenizer").mkdir(parents=True)
    blobs.mkdir()
    (blobs / "deadbeef").write_text("{}")
    (snap / "config.json").symlink_to("../../blobs/deadbeef")
    (snap / "tokenizer" / "tokenizer.json").symlink_to("../../../blobs/deadbeef")
    assert confine(snap / "config.json", snap) == (blobs / "deadbeef").resolve()
    assert (
        confine(snap / "tokenizer" / "tokenizer.json", snap / "tokenizer") == (blobs / "deadbeef").resolve()
    )
    (snap / "other").symlink_to(tmp_path / "hub")  # but nothing else of the cache
    one_line_error("outside", confine, snap / "other", snap)


BAD_NAMES = [
    "../x.safetensors",
    "/etc/passwd",
    "a/b.safetensors",
    "..",
    ".",
    "",
    3,
    None,
    "a\\..\\b",
    "x\x00y",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_file_names_from_a_folder_json_are_plain_names(name):
    one_line_error("is not a plain file name in its folder", check_name, name, "index.json")


def test_check_name_keeps_plain_names():
    assert check_name("model-00001-of-00002.safetensors", "x") == "model-00001-of-00002.safetensors"
    assert check_name("..hidden", "x") == "..hidden"  # a name starting with dots is still a name


def test_copies_keep_no_wider_permissions_than_the_source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, mode in (("private.json", 0o600), ("group.json", 0o640), ("script.sh", 0o755)):
        (src / name).write_text(name)
        os.chmod(src / name, mode)
    for name in ("private.json", "group.json", "script.sh"):
        copy_file(src / name, src, tmp_path / "dst" / name)
        assert (tmp_path / "dst" / name).read_text() == name
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "dst").iterdir()}
    mask = os.umask(0)
    os.umask(mask)
    assert modes["private.json"] == 0o600
    assert modes["group.json"] == 0o640 & ~mask
    assert modes["script.sh"] == 0o644 & ~mask  # never executable
    (src / "link").symlink_to("/etc/passwd")
    one_line_error("outside", copy_file, src / "link", src, tmp_path / "dst" / "link")
    assert not (tmp_path / "dst" / "link").exists()


def test_read_json_refuses_fifos_huge_files_and_non_json_numbers(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    one_line_error("not a regular file", read_json, fifo)  # would block forever if opened
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)
    one_line_error("too large for a JSON config", read_json, big)
    (tmp_path / "nan.json").write_text('{"scaling_factor": NaN}')
    one_line_error("unreadable JSON", read_json, tmp_path / "nan.json")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    one_line_error("unreadable JSON", read_json, tmp_path / "deep.json")
    (tmp_path / "w.safetensors").symlink_to("/etc/passwd")
    one_line_error("outside", read_weights, tmp_path / "w.safetensors", tmp_path)


@dataclasses.dataclass
class Cfg:
    size: int = 1
    scale: float = 1.0
    name: str = "a"
    flags: list[int] = dataclasses.field(default_factory=list)
    on: bool = False
    maybe: int | None = None


@pytest.mark.parametrize(
    "field, value",
    [("size", "128"), ("size", 1.5), ("size", True), ("size", None), ("scale", "x"), ("scale", False),
     ("name", 3), ("flags", [1, "2"]), ("flags", 3), ("on", 1), ("maybe", "1")],
)  # fmt: skip
def test_config_fields_are_type_checked(field, value):
    msg = one_line_error(rf"where: Cfg\.{field} must be ", from_dict, Cfg, {field: value}, "where")
    assert repr(value)[:20] in msg


def test_config_fields_of_the_right_type_pass():
    cfg = from_dict(Cfg, {"size": 2, "scale": 3, "flags": [1, 2], "on": True, "maybe": None}, "where")
    assert cfg == Cfg(size=2, scale=3, flags=[1, 2], on=True)


# ----------------------------------------------------------------------------- AtomicFolder


def write(folder: Path, marker: str = "model_index.json") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / marker).write_text("{}")
    (folder / "weights.bin").write_text("old")
    return folder


def refused(match: str, target: Path, **kw) -> None:
    """AtomicFolder(target, **kw) refuses to start: nothing is written or removed."""
    with pytest.raises(UserError, match=match):
        AtomicFolder(target, **kw).__enter__()


def listing(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_output_that_is_holds_or_lies_in_an_input_is_refused(tmp_path):
    src = write(tmp_path / "src")
    before = listing(src)
    for dst, how in (
        (src, "is the input"),
        (src / "out", "is inside the input"),
        (tmp_path, "holds the input"),
    ):
        refused(how, dst, overwrite=True, inputs=[src])
    (tmp_path / "alias").symlink_to(src, target_is_directory=True)  # the same folder by another name
    refused("is the input", tmp_path / "alias", overwrite=True, inputs=[src])
    assert listing(src) == before and not list(tmp_path.glob(".*tmp-*"))


def test_a_non_empty_output_needs_overwrite_and_must_be_ours(tmp_path):
    mine = write(tmp_path / "mine")
    refused(r"exists and is not empty: give --overwrite", mine)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    refused(r"is not a pipeline folder \(no model_index\.json\)", theirs, overwrite=True)
    (tmp_path / "file").write_text("x")
    refused("exists and is not a folder", tmp_path / "file", overwrite=True)
    assert (theirs / "notes.txt").read_text() == "keep me" and (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    with AtomicFolder(tmp_path / "empty") as tmp:  # an empty folder is fine
        (tmp / "model_index.json").write_text("{}")
    with AtomicFolder(mine, overwrite=True) as tmp:
        assert listing(mine) == {"model_index.json": "{}", "weights.bin": "old"}  # untouched while writing
        (tmp / "model_index.json").write_text('{"new": 1}')
    assert listing(mine) == {"model_index.json": '{"new": 1}'}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file", "mine", "theirs"]


def test_a_failed_write_leaves_the_old_folder_and_nothing_else(tmp_path):
    old = write(tmp_path / "out")
    with pytest.raises(RuntimeError), AtomicFolder(old, overwrite=True) as tmp:
        (tmp / "half").write_text("half")
        raise RuntimeError("killed half-way")
    assert listing(old) == {"model_index.json": "{}", "weights.bin": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_killed_runs_are_swept(tmp_path):
    out, pid = tmp_path / "out", dead_pid()
    write(tmp_path / f".out.tmp-{pid}")  # killed while writing
    write(tmp_path / f".out.tmp-{os.getppid()}")  # a live process's: left alone
    (tmp_path / f".other.tmp-{pid}").mkdir()  # another folder's: not ours to judge
    with AtomicFolder(out) as tmp:
        (tmp / "model_index.json").write_text("{}")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f".other.tmp-{pid}", f".out.tmp-{os.getppid()}", "out"]


def test_a_run_killed_between_its_two_renames_gets_its_folder_back(tmp_path):
    pid = dead_pid()
    write(tmp_path / f".out.old-{pid}")  # the old folder, moved aside; the new one never arrived
    refused("exists and is not empty", tmp_path / "out")
    assert listing(tmp_path / "out") == {"model_index.json": "{}", "weights.bin": "old"}
    write(tmp_path / f".out.old-{pid}")  # moved aside, and the new one is in place: the old one goes
    with AtomicFolder(tmp_path / "out", overwrite=True) as tmp:
        (tmp / "model_index.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replacing_a_link_to_a_folder_keeps_the_folder_it_named(tmp_path):
    real = write(tmp_path / "real")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    with AtomicFolder(tmp_path / "link", overwrite=True) as tmp:
        (tmp / "model_index.json").write_text('{"new": 1}')
    assert listing(real) == {"model_index.json": "{}", "weights.bin": "old"}
    assert not (tmp_path / "link").is_symlink() and json.loads(
        (tmp_path / "link" / "model_index.json").read_text()
    )
