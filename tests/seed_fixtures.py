"""Where the seeds' parity fixtures live and how to read one (shared by the parity tests).

A fixture NAME is three files: NAME.json (class, constructor config, call, shapes), NAME.safetensors (its
state dict in the seed's key layout) and NAME.io.safetensors (inputs and reference outputs). The folder is
$LONGVIDEO_FIXTURES, default `../shared/fixtures` next to the repository root.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("LONGVIDEO_FIXTURES", REPO.parent / "shared" / "fixtures"))


def fixture_files(name: str) -> list[Path]:
    return [FIXTURES / f"{name}{ext}" for ext in (".json", ".safetensors", ".io.safetensors")]


def has_fixture(name: str) -> bool:
    return all(f.is_file() for f in fixture_files(name))


def load_fixture(name: str) -> tuple[dict, dict, dict]:
    """(meta json, state dict, io tensors) of fixture `name`."""
    meta, sd, io = fixture_files(name)
    return json.loads(meta.read_text()), load_file(str(sd)), load_file(str(io))
