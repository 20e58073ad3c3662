"""Typed configs: one dataclass per component, filled from YAML and `key=value` overrides.

OmegaConf does the merging and type checking against the dataclass schema (it rejects unknown keys and
values of the wrong type); this module turns its errors into one-line `UserError`s and hands back a plain
dataclass instance, so no OmegaConf object leaks into the rest of the code.

    cfg = load_config(TrainConfig, "run.yaml", ["optim.lr=1e-4", "data.num_frames=17"])
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from longvideo.errors import UserError

T = TypeVar("T")


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans and floats: only true/false are booleans (YAML 1.1 also reads yes/no/
    on/off, which turned `mixed_precision: no` into the string "False"; a bool field still takes them), and
    1e-4 is a float (YAML 1.1 wants 1.0e-4). Aliases (`*name`) are refused: a config needs none, and
    nested ones expand exponentially once copied ("billion laughs")."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"line {mark.line + 1}: aliases (*name) are not allowed in a config")
        return super().compose_node(parent, index)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in (_BOOL, _FLOAT)]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Defaults of `cls` <- YAML file at `path` <- `key=value` overrides (dotted keys for nesting)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    layers = [OmegaConf.structured(cls)]
    if path is not None:
        layers.append(_read_yaml(Path(path)))
    if overrides:
        layers.append(_parse_overrides(overrides))
    try:
        merged = OmegaConf.merge(*layers)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise UserError(f"config: {_one_line(e)}") from None
    _validate_tree(obj)
    return obj


def config_task(path: str | Path, overrides: Sequence[str] = (), default: str = "vae") -> str | None:
    """The `task` a training config names (a `task=...` override wins), read the way load_config reads it;
    None when the file or an override cannot be read (load_config then reports it in its own words)."""
    try:
        data = _read_yaml(Path(path))
        over = _parse_overrides(overrides)
    except UserError:
        return None
    task = over.get("task", data.get("task", default))
    return None if task is None else str(task)


def _validate_tree(obj: Any, where: str = "") -> None:
    """Run every component's own `validate()`, leaves first. Trainer configs raise UserError; a model's
    config raises ValueError (it is a library class too), made here a one-line error naming the key."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_tree(value, f"{where}{f.name}.")
    if callable(getattr(obj, "validate", None)):
        try:
            obj.validate()
        except ValueError as e:
            raise UserError(f"config: {where.rstrip('.') or type(obj).__name__}: {e}") from None


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config dataclass (for saving next to checkpoints)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


MAX_CONFIG_BYTES = 1 << 24  # 16 MiB: a config is a page of key: value lines, not a data file


def _read_yaml(path: Path):
    if path.is_dir():
        raise UserError(f"config file {path} is a folder: give a YAML file")
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"config file {path} is over {MAX_CONFIG_BYTES >> 20} MiB: not a YAML config")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"config file {path} is not text (binary data: a video?): give a YAML file of key: value pairs"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {_one_line(e)}") from None
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply to be a config") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping at the top level")
    return OmegaConf.create(data)


def _parse_overrides(overrides: Sequence[str]):
    tree: dict = {}
    for o in overrides:
        key, sep, text = o.partition("=")
        if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
            raise UserError(f"bad override {o!r}: expected key=value (dotted keys for nested fields)")
        try:
            value = yaml.load(text, Loader=_Loader) if text else ""
        except yaml.YAMLError as e:
            raise UserError(f"bad override {o!r}: {_one_line(e)}") from None
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            if not isinstance(node.get(part, {}), dict):
                raise UserError(f"bad override {o!r}: {part} is set to a value above")
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return OmegaConf.create(tree)
    except OmegaConfBaseException as e:
        raise UserError(f"bad override: {_one_line(e)}") from None


def _one_line(e: Exception) -> str:
    """OmegaConf messages span several lines (full_key, object_type...); keep the first, add the key."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    key = getattr(e, "full_key", None)
    if key and str(key) not in msg:
        msg += f" (key: {key})"
    return msg
