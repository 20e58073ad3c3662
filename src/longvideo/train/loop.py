"""The one training loop both trainers run: resume, step, log, checkpoint, export.

A trainer supplies its step and its state (the `Trainer` protocol); the loop owns everything around them:

    resume from the newest checkpoint in OUT/ckpt (train/checkpoint.py)
    while step < end: logs = trainer.train_step(step); step += 1
        OUT/metrics.jsonl every log_every steps: the step's logs + loss_mean (the mean loss since the
        previous line: one step's loss is noisy), TensorBoard when asked
        a checkpoint every save_every steps and at the end
    export (when asked)

Under torchrun every rank runs the loop; `checkpoint_state` is collective (a sharded model is gathered), only
the main rank writes files, and ranks meet at a barrier after each checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from longvideo.errors import UserError
from longvideo.parallel import barrier
from longvideo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint


@dataclass
class CheckpointState:
    """What a trainer checkpoints: flat tensor state dicts (safetensors), torch-saveable objects (optimizer
    state: read back with weights_only=True) and JSON metadata."""

    tensors: dict[str, dict[str, torch.Tensor]]
    objects: dict[str, Any] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class Trainer(Protocol):
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on global batch `step`; returns logs with at least "loss"."""

    def checkpoint_state(self) -> CheckpointState:
        """The state to save (called on every rank: it may gather shards)."""

    def load_checkpoint_state(self, state: CheckpointState) -> None:
        """Put a saved state back (called on every rank)."""

    def export(self, folder: str) -> Any:
        """Write the trained model (EMA weights) where users load it from."""


@dataclass
class LoopConfig:
    """The loop's part of a trainer config (the fields of the same names)."""

    out: str
    steps: int
    stop_at: int = 0  # stop (checkpoint + export) after this step; the lr schedule still spans `steps`
    save_every: int = 500
    keep: int = 3
    log_every: int = 20
    tensorboard: bool = False
    export: str = ""  # "" = no export

    @classmethod
    def of(cls, cfg: Any) -> LoopConfig:
        return cls(cfg.out, cfg.steps, cfg.stop_at, cfg.save_every, cfg.keep, cfg.log_every,
                   getattr(cfg, "tensorboard", False), cfg.export or "")  # fmt: skip

    @property
    def end(self) -> int:
        return min(self.steps, self.stop_at) if self.stop_at > 0 else self.steps


def save(trainer: Trainer, loop: LoopConfig, step: int, main: bool) -> Path | None:
    """Checkpoint `step` atomically (the main rank writes), keeping the newest `loop.keep`."""
    state = trainer.checkpoint_state()
    path = None
    if main:
        root = Path(loop.out) / "ckpt"
        path = save_checkpoint(root, step, state.tensors, state.objects, state.meta, keep=loop.keep)
    barrier()
    return path


def resume(trainer: Trainer, loop: LoopConfig) -> int | None:
    """Load the newest checkpoint into the trainer; its step, or None when there is none."""
    path = latest_checkpoint(Path(loop.out) / "ckpt")
    if path is None:
        return None
    tensors, objects, meta = load_checkpoint(path)
    trainer.load_checkpoint_state(CheckpointState(tensors, objects, meta))
    return int(meta["step"])


def fit(trainer: Trainer, loop: LoopConfig, *, main: bool = True, name: str = "train",
        progress: bool = True) -> dict:  # fmt: skip
    """Run `trainer` from its newest checkpoint (or step 0) to `loop.end`; export if asked.
    Returns {steps, resumed, last (the last step's logs), out}."""
    resumed = resume(trainer, loop)
    step = resumed or 0
    out = Path(loop.out)
    log = tb = None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        log = (out / "metrics.jsonl").open("a")
        tb = _tensorboard(out) if loop.tensorboard else None
    bar = tqdm(total=loop.end, initial=step, desc=name, unit="step", disable=not (progress and main))
    last: dict = {}
    losses: list[float] = []  # since the last log line (main rank only)
    try:
        while step < loop.end:
            t0 = time.perf_counter()
            logs = trainer.train_step(step)
            step += 1
            last = logs | {"step": step, "sec": round(time.perf_counter() - t0, 4)}
            if log is not None:
                losses.append(logs["loss"])
                if step % loop.log_every == 0 or step == loop.end:
                    log.write(json.dumps(last | {"loss_mean": sum(losses) / len(losses)}) + "\n")
                    log.flush()
                    losses.clear()
                    if tb is not None:
                        for k, v in logs.items():
                            tb.add_scalar(f"train/{k}", v, step)
            if step % loop.save_every == 0 or step == loop.end:
                save(trainer, loop, step, main)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            bar.update()
    finally:
        bar.close()
        if log is not None:
            log.close()
        if tb is not None:
            tb.close()
    if loop.export:
        trainer.export(loop.export)
    return {"steps": step, "resumed": resumed is not None, "last": last, "out": str(out)}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(str(out / "tb"))
