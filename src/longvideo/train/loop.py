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

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from longvideo.errors import UserError
from longvideo.outputs import folder_lock
from longvideo.parallel import barrier
from longvideo.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    newest_intact,
    save_checkpoint,
    sweep_temporary,
)


@dataclass
class CheckpointState:
    """What a trainer checkpoints: flat tensor state dicts (safetensors), torch-saveable objects (optimizer
    state: read back with weights_only=True) and JSON metadata."""

    tensors: dict[str, dict[str, torch.Tensor]]
    objects: dict[str, Any] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


class Trainer(Protocol):
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on global batch `step`; returns logs with at least "loss", and "skipped": True
        when the loss or the gradients were not finite and nothing was updated (the same on every rank)."""

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
    max_bad_steps: int = 5  # stop after this many steps in a row with a non-finite loss or gradient

    @classmethod
    def of(cls, cfg: Any) -> LoopConfig:
        for name in ("save_every", "log_every", "max_bad_steps"):
            if getattr(cfg, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(cfg, name)}")
        return cls(cfg.out, cfg.steps, cfg.stop_at, cfg.save_every, cfg.keep, cfg.log_every,
                   getattr(cfg, "tensorboard", False), cfg.export or "", cfg.max_bad_steps)  # fmt: skip

    @property
    def end(self) -> int:
        return min(self.steps, self.stop_at) if self.stop_at > 0 else self.steps


def save(trainer: Trainer, loop: LoopConfig, step: int, main: bool) -> Path | None:
    """Checkpoint `step` atomically (the main rank writes), keeping the newest `loop.keep`. A state with a
    non-finite tensor is never written (it would rotate finite checkpoints away): None, said on stderr."""
    state = trainer.checkpoint_state()
    path = None
    bad = _non_finite(state.tensors)
    if main and bad:
        print(f"longvideo: step {step} not checkpointed: {bad} is not finite", file=sys.stderr, flush=True)
    elif main:
        root = Path(loop.out) / "ckpt"
        path = save_checkpoint(root, step, state.tensors, state.objects, state.meta, keep=loop.keep)
    barrier()
    return path


def resume(trainer: Trainer, loop: LoopConfig) -> int | None:
    """Load the newest intact checkpoint into the trainer; its step, or None when there is none."""
    path = newest_intact(Path(loop.out) / "ckpt")
    if path is None:
        return None
    tensors, objects, meta = load_checkpoint(path)
    trainer.load_checkpoint_state(CheckpointState(tensors, objects, meta))
    return int(meta["step"])


def check_resumable(state: CheckpointState, own: dict[str, Any], own_cfg: dict, out: str) -> None:
    """A checkpoint's model state must fit the model being trained (`own`: its state dict, `own_cfg`: its
    config as a dict): a one-line error naming the difference (the model config fields that differ, and the
    first tensor whose name or shape differs)."""
    saved, saved_cfg = state.tensors["model"], state.meta.get("config", {}).get("model", {})
    path = f"{out}/ckpt"
    changed = [k for k in sorted(set(saved_cfg) | set(own_cfg)) if saved_cfg.get(k) != own_cfg.get(k)]
    mismatch = sorted(set(saved) ^ set(own))
    if not mismatch:
        mismatch = [k for k in own if tuple(saved[k].shape) != tuple(own[k].shape)]
    if not mismatch:
        return
    k = mismatch[0]
    what = (f"{k}: {tuple(saved[k].shape)} there, {tuple(own[k].shape)} here" if k in saved and k in own
            else f"{k} is only {'there' if k in saved else 'here'}")  # fmt: skip
    why = ", ".join(f"{c} {saved_cfg.get(c)!r} -> {own_cfg.get(c)!r}" for c in changed[:4])
    raise UserError(
        f"{path} was trained with another model ({why or what}; {what}): resume with the same model "
        "config, or train into another out="
    )


def fit(trainer: Trainer, loop: LoopConfig, *, main: bool = True, name: str = "train",
        progress: bool = True) -> dict:  # fmt: skip
    """Run `trainer` from its newest intact checkpoint (or step 0) to `loop.end`; export if asked.
    Returns {steps, resumed, last (the last step's logs, non-finite numbers as null), out}."""
    out = Path(loop.out)
    with contextlib.ExitStack() as stack:
        if main:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(folder_lock(out, "training run"))  # logs and checkpoints
            sweep_temporary(out / "ckpt")
        resumed = resume(trainer, loop)
        step = resumed or 0
        log = tb = None
        if main:
            log = stack.enter_context(_metrics(out / "metrics.jsonl", step))
            tb = _tensorboard(out) if loop.tensorboard else None
            if tb is not None:
                stack.callback(tb.close)
        bar = stack.enter_context(
            tqdm(total=loop.end, initial=step, desc=name, unit="step", disable=not (progress and main))
        )
        last: dict = {}
        losses: list[float] = []  # finite losses since the last log line (main rank only)
        bad = skipped = 0  # non-finite steps in a row, and in all
        while step < loop.end:
            t0 = time.perf_counter()
            logs = trainer.train_step(step)
            step += 1
            if logs.get("skipped"):
                bad, skipped = bad + 1, skipped + 1
            else:
                bad = 0
            last = _finite_or_none(logs | {"step": step, "sec": round(time.perf_counter() - t0, 4)})
            if log is not None:
                if not logs.get("skipped"):
                    losses.append(logs["loss"])
                if step % loop.log_every == 0 or step == loop.end or logs.get("skipped"):
                    mean = sum(losses) / len(losses) if losses else None
                    log.write(json.dumps(last | {"loss_mean": mean, "skipped_total": skipped}) + "\n")
                    log.flush()
                    losses.clear()
                    if tb is not None:
                        for k, v in logs.items():
                            if isinstance(v, int | float) and math.isfinite(v):
                                tb.add_scalar(f"train/{k}", v, step)
            if bad >= loop.max_bad_steps:
                bar.close()
                newest = latest_checkpoint(out / "ckpt")
                kept = f"the newest checkpoint, {newest}, is kept" if newest else "no checkpoint was written"
                raise UserError(
                    f"steps {step - bad + 1}-{step}: the loss or the gradients were not finite {bad} times "
                    f"in a row (too high an lr? bad data?); stopped, {kept}"
                )
            if step % loop.save_every == 0 or step == loop.end:
                save(trainer, loop, step, main)
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
            bar.update()
    if loop.export:
        trainer.export(loop.export)
    return {"steps": step, "resumed": resumed is not None, "skipped": skipped, "last": last, "out": str(out)}


@contextlib.contextmanager
def _metrics(path: Path, step: int) -> Iterator[Any]:
    """metrics.jsonl opened for appending, after dropping what a resume at `step` replays: rows of later
    steps (the killed run logged them, this one will again) and a torn last line."""
    if path.exists():
        keep = []
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut off by a kill
            if isinstance(row, dict) and row.get("step", 0) <= step:
                keep.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)
    with path.open("a") as f:
        yield f


def _non_finite(tensors: dict[str, dict[str, torch.Tensor]]) -> str | None:
    for name, sd in tensors.items():
        for k, v in sd.items():
            if v.is_floating_point() and not bool(torch.isfinite(v).all()):
                return f"{name} {k}"
    return None


def _finite_or_none(logs: dict) -> dict:
    """JSON has no NaN: non-finite numbers become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in logs.items()}


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from e
    return SummaryWriter(str(out / "tb"))
