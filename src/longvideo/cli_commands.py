"""The `longvideo` commands: one function per (sub)command, taking the parsed arguments (cli.py builds the
parser and routes to them). Each imports what it needs when it runs, so `longvideo --help` stays fast, and
prints its machine-readable result (JSON) last on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import TYPE_CHECKING

from longvideo.errors import UserError
from longvideo.outputs import check_not_input, command_guard, sweep_temps, write_text_atomic

if TYPE_CHECKING:
    from longvideo.pipelines import GenerationRequest


def generation_request(a: argparse.Namespace) -> GenerationRequest:
    """The GenerationRequest of `longvideo generate`'s arguments: every request field the command line gave
    (the generate parser leaves out the ones not given, so the request's defaults apply; --image is a path,
    read here into its first frame)."""
    from longvideo.pipelines import GenerationRequest

    options = {
        f.name: getattr(a, f.name) for f in dataclasses.fields(GenerationRequest) if hasattr(a, f.name)
    }
    if "image" in options:
        from longvideo.data.video_io import read_video

        options["image"] = read_video(options["image"], num_frames=1)[0]  # (H, W, 3) uint8; PyAV reads PNGs
    return GenerationRequest(**options)


@command_guard()  # SIGTERM removes temp files; bars end before an error line
def cmd_generate(a: argparse.Namespace) -> None:
    from longvideo.pipelines import VideoPipeline

    check_not_input(a.output, "-o", {"the --image file": getattr(a, "image", None)})
    out = os.path.abspath(a.output)
    sweep_temps(os.path.dirname(out), name=os.path.basename(out))  # what a killed run left
    request = generation_request(a)  # before the model loads: a bad --image fails at once
    pipe = VideoPipeline.from_pretrained(a.model)
    print(json.dumps(pipe.generate_to_file(a.output, request)))


def cmd_models(a: argparse.Namespace) -> None:
    from longvideo.pipelines.catalog import list_models

    rows = list_models()
    if a.json:
        print(json.dumps(rows))
        return
    print(f"{'COMPONENT':<12} {'NAME':<22} {'FAMILY':<10} {'PARAMS':>11}")
    for r in rows:
        size = (
            f"{r['params'] / 1e6:10.1f}M"
            if "params" in r
            else ("installed" if r["installed"] else "not installed")
        )
        print(f"{r['component']:<12} {r['name']:<22} {r.get('family', ''):<10} {size:>11}")


def cmd_train(a: argparse.Namespace) -> None:
    from longvideo.config import config_task, load_config

    task = config_task(a.config, a.overrides)  # None: load_config below reports what is wrong
    if task == "dit":
        from longvideo.parallel import shutdown
        from longvideo.train.dit import DiTTrainConfig, DiTTrainer

        cfg = load_config(DiTTrainConfig, a.config, a.overrides)
        try:
            trainer = DiTTrainer(cfg)
            res = trainer.fit()
            if trainer.env.main:
                print(json.dumps(res))
        finally:
            shutdown()
        return
    if task not in (None, "vae"):
        raise UserError(f"unknown task {task!r} in {a.config} (tasks: vae, dit)")
    from longvideo.train.vae import VAETrainConfig, VAETrainer

    cfg = load_config(VAETrainConfig, a.config, a.overrides)
    print(json.dumps(VAETrainer(cfg).fit()))


@command_guard()  # SIGTERM removes temp files; bars end before an error line
def cmd_curate(a: argparse.Namespace) -> None:
    if a.merge:
        from longvideo.curate.manifest import merge

        print(json.dumps(merge(a.inputs, a.output), indent=1))
        return
    from longvideo.config import load_config
    from longvideo.curate.config import CurateConfig
    from longvideo.curate.run import curate, parse_shard

    if not a.inputs:
        raise UserError("curate: give at least one INPUT (a video file or a folder)")
    cfg = load_config(CurateConfig, a.config, list(a.set))
    if a.steps is not None:
        cfg.steps = a.steps
    shard = parse_shard(a.shard) if a.shard else (0, 1)
    summary = curate(a.inputs, a.output, cfg, workers=a.workers, shard=shard, progress=not a.no_progress,
                     retry_errors=a.retry_errors)  # fmt: skip
    print(json.dumps(summary, indent=1))


def cmd_convert(a: argparse.Namespace) -> None:
    from longvideo.convert.output import convert_source

    summary = convert_source(
        a.source_format, a.src, a.dst, vae=a.vae, text_encoder=a.text_encoder, overwrite=a.overwrite
    )
    print(json.dumps(summary))


@command_guard()  # SIGTERM removes temp files; bars end before an error line
def cmd_data_shapes(a: argparse.Namespace) -> None:
    from longvideo.data.shapes import ShapesConfig
    from longvideo.data.shapes_dataset import write_shapes_dataset

    cfg = ShapesConfig(
        num_frames=a.frames,
        include_held_out=a.include_held_out or a.held_out_only,
        held_out_only=a.held_out_only,
        num_objects=a.objects or [1, 2],
        backgrounds=a.backgrounds or [],
        colors=a.colors or [],
        shapes=a.shapes or [],
        sizes=a.sizes or [],
        motions=a.motions or [],
    )
    summary = write_shapes_dataset(a.output, a.n, cfg, seed=a.seed, quality=a.quality, workers=a.workers)
    print(json.dumps(summary))


@command_guard()  # SIGTERM removes temp files; bars end before an error line
def cmd_eval_shapes(a: argparse.Namespace) -> None:
    from longvideo.eval.shapes import evaluate, evaluate_manifest, summarise

    if (a.video is None) == (a.manifest is None):
        raise UserError("eval shapes: give exactly one of VIDEO or --manifest")
    if a.manifest is None:
        from longvideo.data.video_io import read_video

        print(json.dumps(evaluate(read_video(a.video), a.prompt), indent=1))
        return
    if a.limit is not None and a.limit <= 0:
        raise UserError(f"--limit must be > 0, got {a.limit}")
    if a.results:
        from pathlib import Path

        from longvideo.eval.shapes import read_manifest

        manifest = Path(a.manifest)
        videos = {f"the manifest's video {r['path']}": manifest.parent / str(r["path"])
                  for r in read_manifest(manifest)}  # fmt: skip
        check_not_input(a.results, "--results", {"the --manifest file": manifest} | videos)
        if Path(a.results).is_dir() or not Path(a.results).absolute().parent.is_dir():
            raise UserError(f"--results {a.results}: not a file in an existing folder")
    results = list(evaluate_manifest(a.manifest, limit=a.limit))
    if a.results:
        write_text_atomic(a.results, "".join(json.dumps(r) + "\n" for r in results))
    print(json.dumps(summarise(results), indent=1))


def cmd_eval_recon(a: argparse.Namespace) -> None:
    from longvideo.eval.recon import shapes_recon
    from longvideo.pipelines.folder import load_vae

    if a.num <= 0 or a.frames < 1 or (a.frames - 1) % 4:
        raise UserError("eval recon: --num must be > 0 and --frames 1 + a multiple of 4 (e.g. 33)")
    vae = load_vae(a.model)
    res = shapes_recon(vae, a.num, a.frames, a.seed, latent_chunk=a.chunk, progress=not a.json, judge=a.judge)
    print(json.dumps(res))


def cmd_bench_vae(a: argparse.Namespace) -> None:
    import torch

    from longvideo.bench import bench_vae
    from longvideo.pipelines.folder import load_vae

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    vae = load_vae(a.model)
    res = bench_vae(vae, a.frames, a.height, a.width, stream=a.chunk > 0, latent_chunk=a.chunk,
                    device=a.device, dtype=getattr(torch, a.dtype))  # fmt: skip
    print(json.dumps(res))
