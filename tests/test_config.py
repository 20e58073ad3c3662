"""YAML + key=value overrides onto typed dataclasses; unknown keys are errors."""

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from longvideo.config import load_config, save_config
from longvideo.data.shapes import ShapesConfig
from longvideo.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class Job:
    name: str = "run"
    steps: int = 10
    precision: str = "no"
    ema: bool = False
    optim: Optim = field(default_factory=Optim)
    data: ShapesConfig = field(default_factory=ShapesConfig)


def test_defaults_yaml_overrides(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("steps: 50\noptim:\n  lr: 3.0e-4\ndata:\n  colors: [red, blue]\n  num_frames: 17\n")
    cfg = load_config(Job, p, ["optim.betas=[0.5,0.9]", "data.num_frames=9", "name=shapes"])
    assert isinstance(cfg, Job) and isinstance(cfg.optim, Optim) and isinstance(cfg.data, ShapesConfig)
    assert cfg.steps == 50 and cfg.optim.lr == 3e-4 and cfg.optim.betas == [0.5, 0.9]
    assert cfg.data.colors == ["red", "blue"] and cfg.data.num_frames == 9 and cfg.name == "shapes"
    assert load_config(Job) == Job()


def test_yaml_1_2_scalars(tmp_path):
    """no/yes/on/off stay strings in a str field (YAML 1.1 made `precision: no` the string "False"); a bool
    field still takes them; 1e-4 is a float in files and overrides; nested overrides merge."""
    p = tmp_path / "job.yaml"
    p.write_text("precision: no\nema: yes\noptim:\n  lr: 1e-3\n")
    cfg = load_config(Job, p)
    assert cfg.precision == "no" and cfg.ema is True and cfg.optim.lr == 1e-3
    overrides = ["precision=off", "ema=false", "optim.lr=2e-4", "optim.betas=[0.5,0.9]", "name="]
    cfg = load_config(Job, p, overrides)
    assert cfg.precision == "off" and cfg.ema is False and cfg.optim.lr == 2e-4
    assert cfg.optim.betas == [0.5, 0.9] and cfg.name == ""
    assert load_config(Job, None, ["name=._", "optim.lr=.5_0"]).name == "._"  # "._" is no float: a string


def test_save_and_reload(tmp_path):
    cfg = load_config(Job, None, ["steps=7", "data.shapes=[circle]"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Job, tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "yaml_text, overrides, msg",
    [
        ("", ["stepz=3"], "stepz"),
        ("optim:\n  momentum: 0.9\n", [], "momentum"),
        ("", ["steps=many"], "steps"),
        ("", ["steps"], "expected key=value"),
        ("", ["=3"], "expected key=value"),
        ("", ["data.colors=[pink]"], "unknown color 'pink'"),  # the component's own validation runs
        ("[1, 2]\n", [], "mapping"),
        ("steps: [unclosed\n", [], "not valid YAML"),
        ("", ["steps=[unclosed"], "bad override"),
        ("", ["optim=3", "optim.lr=1"], "bad override"),
    ],
)
def test_errors_are_one_line(tmp_path, yaml_text, overrides, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UserError, match=msg) as e:
        load_config(Job, p, overrides)
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(UserError, match="not found"):
        load_config(Job, "/nonexistent/job.yaml")


ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("**/*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_training_configs_load(path):
    """Every recipe in configs/ (configs/**/*.yaml) parses against its trainer's schema and passes
    validation."""
    import yaml

    from longvideo.train.dit import DiTTrainConfig
    from longvideo.train.vae import VAETrainConfig

    task = yaml.safe_load(path.read_text())["task"]
    cfg = load_config({"vae": VAETrainConfig, "dit": DiTTrainConfig}[task], path)
    assert cfg.task == task and cfg.steps > 0


def test_shapes_chain_is_the_script():
    """configs/shapes/ holds exactly the configs scripts/train_shapes_model.sh runs (the chain that makes the
    bundled model), each once: no dead recipe beside it, no stage missing."""
    import re

    script = (ROOT / "scripts" / "train_shapes_model.sh").read_text()
    run = re.findall(r"^longvideo train (configs/\S+\.yaml)", script, flags=re.M)
    assert len(run) == len(set(run)) > 0
    assert sorted(run) == sorted(str(p.relative_to(ROOT)) for p in (CONFIGS / "shapes").glob("*.yaml"))


def test_yaml_aliases_are_refused(tmp_path):
    """A config needs no aliases, and nested ones expand exponentially once copied ("billion laughs")."""
    from longvideo.config import load_config
    from longvideo.errors import UserError
    from longvideo.train.dit import DiTTrainConfig

    bomb = tmp_path / "bomb.yaml"
    rows = ['a: &a ["x", "x", "x", "x", "x", "x", "x", "x"]']
    rows += [f"{c}: &{c} [{', '.join([f'*{p}'] * 8)}]" for p, c in zip("abcdefg", "bcdefgh", strict=True)]
    bomb.write_text("task: dit\n" + "\n".join(rows) + "\n")
    with pytest.raises(UserError, match=r"aliases \(\*name\) are not allowed"):
        load_config(DiTTrainConfig, bomb)
