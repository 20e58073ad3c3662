"""`longvideo convert` never loses data and never reads outside the folders it is given (issue #21):
DST == SRC, DST inside SRC or SRC inside DST are refused; an existing non-empty DST needs --overwrite and is
replaced only once the new folder is complete; a killed run's temporary folders are swept by the next; a
source's symlinks out of it and shard names with `..` are refused; only the files the format names are
copied, no more readable than in the source; legacy pickles load weights-only.

Sources are built from the parity fixtures (the OSP v1.2 transformer, 0.4 MB) and the tiny T5.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from longvideo.cli import main
from seed_fixtures import FIXTURES, has_fixture, load_fixture

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def osp_transformer(root: Path) -> Path:
    """root/transformer/{config.json, diffusion_pytorch_model.safetensors} of the OSP v1.2 fixture."""
    if not has_fixture("osp_v1_2_dit"):
        pytest.skip(f"fixture osp_v1_2_dit not found in {FIXTURES} (set LONGVIDEO_FIXTURES)")
    meta, sd, _ = load_fixture("osp_v1_2_dit")
    d = root / "transformer"
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"_class_name": "OpenSoraT2V", **meta["config"]}))
    save_file(sd, d / "diffusion_pytorch_model.safetensors")
    return d


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """An OSP v1.2 source: transformer/ + text_encoder/ + tokenizer/ (no VAE: the fixture's is 30 MB)."""
    from longvideo.pipelines.tiny import tiny_text_encoder

    root = tmp_path_factory.mktemp("template") / "osp"
    osp_transformer(root)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        width = load_fixture("osp_v1_2_dit")[0]["config"]["caption_channels"]
        tiny_text_encoder(dim=width).save_pretrained(root)
    return root


@pytest.fixture
def src(template, tmp_path) -> Path:
    shutil.copytree(template, tmp_path / "src", symlinks=True)
    return tmp_path / "src"


def convert(*args, capsys) -> tuple[int, str, str]:
    rc = main(["convert", "--from", "osp-v1.2", *map(str, args)])
    out, err = capsys.readouterr()
    return rc, out, err


def refused(*args, capsys) -> str:
    rc, out, err = convert(*args, capsys=capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("longvideo: error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if re.search(r"\.(tmp|old)-\d+$", p.name))


# ----------------------------------------------------------------------------- never delete DST or SRC


def test_dst_equal_to_inside_or_holding_src_is_refused(src, tmp_path, capsys):
    before = snapshot(src)
    assert "is the input" in refused(src, src, capsys=capsys)
    assert "is the input" in refused(src, src, "--overwrite", capsys=capsys)
    assert "is inside the input" in refused(src, src / "converted", capsys=capsys)
    # the transformer folder as SRC, its parent as DST: replacing DST would delete SRC
    assert "holds the input" in refused(src / "transformer", src, "--overwrite", capsys=capsys)
    other = osp_transformer(tmp_path / "other").parent
    msg = refused(other, src / "text_encoder", "--text-encoder", src, "--overwrite", capsys=capsys)
    assert "is inside the input" in msg
    assert snapshot(src) == before and leftovers(tmp_path) == [] and leftovers(src) == []


def test_an_existing_dst_is_replaced_only_with_overwrite_and_only_when_complete(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    rc, out, err = convert(src, dst, capsys=capsys)
    assert rc == 0, err
    first = snapshot(dst)
    assert "--overwrite" in refused(src, dst, capsys=capsys)  # a converted folder: still needs --overwrite
    assert snapshot(dst) == first
    (dst / "notes.txt").write_text("mine")
    rc, out, err = convert(src, dst, "--overwrite", capsys=capsys)
    assert rc == 0, err
    assert snapshot(dst).keys() == first.keys() and json.loads(out)["output"] == str(dst)  # notes.txt gone
    second = snapshot(dst)
    # a source that fails half-way: the old DST stays as it was, nothing is left beside it
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    w = bad / "transformer" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    assert "truncated or corrupt" in refused(bad, dst, "--overwrite", capsys=capsys)
    assert snapshot(dst) == second and leftovers(tmp_path) == []


def test_a_folder_of_other_files_is_never_replaced(src, tmp_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    assert "exists and is not empty: give --overwrite" in refused(src, home, capsys=capsys)
    assert "is not a pipeline folder (no model_index.json)" in refused(
        src, home, "--overwrite", capsys=capsys
    )
    assert (home / "thesis.tex").read_text() == "years of work" and leftovers(tmp_path) == []


def test_the_temporary_folder_of_a_killed_run_is_swept(src, tmp_path, capsys):
    """A run killed with SIGKILL (nothing of ours runs) leaves .DST.tmp-PID; the next run removes it."""
    dst = tmp_path / "dst"
    code = (
        "import os, sys, longvideo.convert.output as o, longvideo.models.weights as w\n"
        "real = w.save_component\n"
        "def die(*a, **k):\n"
        "    real(*a, **k); os.kill(os.getpid(), 9)\n"
        "o.save_component = die\n"
        "o.convert_source('osp-v1.2', sys.argv[1], sys.argv[2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    p = subprocess.Popen([sys.executable, "-c", code, str(src), str(dst)], env=env, stderr=subprocess.PIPE)
    _, stderr = p.communicate()
    assert p.returncode == -9, stderr.decode()[-2000:]
    assert leftovers(tmp_path) == [f".dst.tmp-{p.pid}"] and not dst.exists()
    rc, _, err = convert(src, dst, capsys=capsys)
    assert rc == 0, err
    assert leftovers(tmp_path) == [] and (dst / "model_index.json").is_file()


# ----------------------------------------------------------------------------- confinement


def test_a_symlink_out_of_the_source_is_never_copied(src, tmp_path, capsys):
    """The issue's case: SRC/text_encoder/stolen.txt -> a secret. Only the files the format names are
    copied, so the link is not even looked at; a named file that links out is refused."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret")
    os.chmod(secret, 0o600)
    (src / "text_encoder" / "stolen.txt").symlink_to(secret)
    (src / "tokenizer" / "notes.md").write_text("not a tokenizer file")
    dst = tmp_path / "dst"
    rc, _, err = convert(src, dst, capsys=capsys)
    assert rc == 0, err
    assert sorted(p.name for p in (dst / "text_encoder").iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in (dst / "tokenizer").iterdir()) == [
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert not any(b"secret" in data for data in snapshot(dst).values())


@pytest.mark.parametrize(
    "link",
    ["text_encoder/model.safetensors", "text_encoder/config.json", "tokenizer/tokenizer.json",
     "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors", "transformer"],
)  # fmt: skip
def test_a_named_file_or_folder_that_links_out_of_the_source_is_refused(src, tmp_path, capsys, link):
    outside = tmp_path / "outside"
    shutil.move(src / link, outside)  # the real file, now outside SRC; SRC keeps a link to it
    (src / link).symlink_to(outside, target_is_directory=outside.is_dir())
    msg = refused(src, tmp_path / "dst", capsys=capsys)
    assert "outside" in msg and "a symlink or '..' out of the folder" in msg, msg
    assert not (tmp_path / "dst").exists() and leftovers(tmp_path) == []


def test_a_link_to_etc_passwd_is_refused(src, tmp_path, capsys):
    f = src / "tokenizer" / "tokenizer_config.json"
    f.unlink()
    f.symlink_to("/etc/passwd")
    assert "resolves to /etc/passwd, outside" in refused(src, tmp_path / "dst", capsys=capsys)


def test_links_inside_the_source_are_fine(src, tmp_path, capsys):
    t = src / "transformer"
    (src / "blobs").mkdir()
    shutil.move(t / "diffusion_pytorch_model.safetensors", src / "blobs" / "w.safetensors")
    (t / "diffusion_pytorch_model.safetensors").symlink_to("../blobs/w.safetensors")
    rc, _, err = convert(src, tmp_path / "dst", capsys=capsys)
    assert rc == 0, err


def sharded(transformer: Path, names: list[str]) -> dict:
    """Split the transformer's weights into two shards named `names` (written at those paths)."""
    w = transformer / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    w.unlink()
    keys = sorted(sd)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for name, part in zip(names, halves, strict=True):
        (transformer / name).parent.mkdir(parents=True, exist_ok=True)
        save_file({k: sd[k] for k in part}, transformer / name)
    index = {"weight_map": {k: name for name, part in zip(names, halves, strict=True) for k in part}}
    (transformer / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_a_sharded_source_converts(src, tmp_path, capsys):
    sharded(src / "transformer", ["a.safetensors", "b.safetensors"])
    rc, _, err = convert(src, tmp_path / "dst", capsys=capsys)
    assert rc == 0, err


@pytest.mark.parametrize("name", ["../../stolen.safetensors", "sub/b.safetensors"])
def test_a_shard_index_with_paths_is_refused(src, tmp_path, capsys, name):
    sharded(src / "transformer", ["a.safetensors", name])
    msg = refused(src, tmp_path / "dst", capsys=capsys)
    assert f"{name!r} is not a plain file name in its folder" in msg


def test_an_absolute_shard_name_is_refused(src, tmp_path, capsys):
    index = sharded(src / "transformer", ["a.safetensors", "b.safetensors"])
    index["weight_map"] = {k: str(src / "transformer" / v) for k, v in index["weight_map"].items()}
    (src / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert "is not a plain file name" in refused(src, tmp_path / "dst", capsys=capsys)


def test_copies_are_no_more_readable_than_the_source(src, tmp_path, capsys):
    os.chmod(src / "text_encoder" / "model.safetensors", 0o600)
    os.chmod(src / "tokenizer" / "tokenizer.json", 0o640)
    dst = tmp_path / "dst"
    rc, _, err = convert(src, dst, capsys=capsys)
    assert rc == 0, err
    mode = {p: stat.S_IMODE((dst / p).stat().st_mode) for p in ("text_encoder/model.safetensors",
                                                                 "tokenizer/tokenizer.json")}  # fmt: skip
    assert mode["text_encoder/model.safetensors"] == 0o600
    assert mode["tokenizer/tokenizer.json"] & ~0o640 == 0
    mask = os.umask(0)
    os.umask(mask)
    # what we wrote ourselves is readable as the umask allows (safetensors writes 0600)
    assert stat.S_IMODE((dst / "transformer" / "model.safetensors").stat().st_mode) == 0o666 & ~mask


def test_a_text_encoder_with_only_a_pickle_is_refused_with_how_to_convert(src, tmp_path, capsys):
    te = src / "text_encoder"
    torch.save(load_file(te / "model.safetensors"), te / "pytorch_model.bin")
    (te / "model.safetensors").unlink()
    msg = refused(src, tmp_path / "dst", capsys=capsys)
    assert "only pytorch_model.bin, a pickle" in msg and "save_pretrained(p, safe_serialization=True)" in msg
    assert "T5EncoderModel.from_pretrained" in msg


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['EVIL_MARKER'])}",))


def test_a_malicious_legacy_pickle_never_runs(tmp_path, capsys, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    d = osp_transformer(tmp_path / "p")
    sd = load_file(d / "diffusion_pytorch_model.safetensors")
    (d / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"state_dict": sd, "hook": Evil()}, d / "model.ckpt")
    assert "not a weights-only torch checkpoint" in refused(d, tmp_path / "dst", capsys=capsys)
    assert not marker.exists()


def test_every_torch_load_is_weights_only():
    """Legacy .pt / .ckpt files are read only with torch.load(..., weights_only=True), everywhere."""
    calls = []
    for f in (REPO / "src" / "longvideo").rglob("*.py"):
        text = f.read_text()
        calls += [(f.name, m) for m in re.findall(r"torch\.load\((.*?)\)", text)]
    assert calls, "no torch.load found: update this test"
    assert all("weights_only=True" in args for _, args in calls), calls
