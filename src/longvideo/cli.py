"""The `longvideo` command line.

One error style everywhere: bad input -> `longvideo: error: <one line>` on stderr, exit code 2, no
traceback (`--traceback` shows one, for bug reports). Commands print their machine-readable result (JSON)
last on stdout; progress bars go to stderr. This file builds the parser (each command's parser names its
function with `set_defaults(func=...)`); the commands themselves are in cli_commands.py.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from longvideo import __version__
from longvideo import cli_commands as cmd
from longvideo.errors import UserError

# Commands of DESIGN.md §3 that are not built yet, and the issue that brings them.
PENDING = {
    "serve": "the web UI",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are our one-line error (argparse prints usage + error over two lines)."""

    def error(self, message: str):  # type: ignore[override]
        where = self.prog.removeprefix("longvideo").strip()
        raise UserError(f"{where}: {message}" if where else message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="longvideo", description="Long video generation with diffusion transformers.")
    p.add_argument("--version", action="version", version=f"longvideo {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_generate(sub)

    m = sub.add_parser("models", help="list the model presets (DiT, VAE) and bundled pipelines")
    m.add_argument("--json", action="store_true", help="print a JSON list")
    m.set_defaults(func=cmd.cmd_models)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.set_defaults(func=cmd.cmd_train)

    _add_curate(sub)
    _add_convert(sub)
    sub.add_parser("serve", help="web UI").set_defaults(func=_pending)

    _add_data(sub)
    _add_eval(sub)
    _add_bench(sub)
    return p


def _add_generate(sub) -> None:
    # Options not given are left out of the namespace (SUPPRESS), so the GenerationRequest's own defaults
    # apply: cli_commands.generation_request maps every option named like a request field onto that field.
    g = sub.add_parser(
        "generate",
        help="generate a video of any length from a prompt (and an image)",
        argument_default=argparse.SUPPRESS,
    )
    g.add_argument("prompt")
    g.add_argument(
        "--negative-prompt", metavar="TEXT", help="what guidance steers away from (default: the model's)"
    )
    g.add_argument(
        "--image",
        metavar="PNG",
        help="first frame (image-to-video), resized/cropped to the size; in a long video, the first window's",
    )
    g.add_argument(
        "--frames",
        type=_at_least(1),
        help="frames >= 1, any number (default: the model's default length). A count that is not 4k+1 is "
        "rounded up to the next 4k+1, generated, and cut back to the count asked for. More than the window: "
        "generated window after window, each continuing from the last --overlap latent frames of the one "
        "before, and written as decoded (memory does not grow with the length)",
    )
    g.add_argument(
        "--window",
        type=_at_least(1),
        help="frames the model generates at once, rounded up to 4k+1 like --frames (default: the model's "
        "window, e.g. 33 = 9 latent frames; 129 after 4x ExVideo post-tuning)",
    )
    g.add_argument(
        "--overlap",
        type=_at_least(0),
        help="latent frames (4 frames each) of one window that the next continues from; less than the "
        "window's latent frames (default: 2)",
    )
    g.add_argument(
        "--anchor",
        action="store_true",
        help="against drift: every window also continues from the video's first latent frame",
    )
    g.add_argument(
        "--cond-noise",
        type=float,
        metavar="T",
        help="against drift: noise the known latent frames to diffusion time T in [0, 1) (default 0 = off; "
        "only for models trained with it)",
    )
    g.add_argument("--height", type=int, help="a multiple of 16 for the presets (default: the model's)")
    g.add_argument("--width", type=int, help="a multiple of 16 for the presets (default: the model's)")
    g.add_argument("--steps", type=int, help="sampling steps (default: the model's)")
    g.add_argument(
        "--guidance", type=float, help="classifier-free guidance scale, 1 = off (default: the model's)"
    )
    g.add_argument("--seed", type=int, help="the same seed gives the same video (default 0)")
    g.add_argument(
        "--sampler",
        metavar="NAME",
        help="e.g. euler, dpmpp_2m (default: the model's; a wrong name lists all)",
    )
    g.add_argument(
        "--model", default="shapes", help="bundled model name or pipeline folder (default: shapes)"
    )
    g.add_argument("-o", "--output", default="out.mp4")
    g.set_defaults(func=cmd.cmd_generate)


def _add_curate(sub) -> None:
    c = sub.add_parser(
        "curate",
        help="curate raw videos into a training manifest",
        description="Probe, split into clips, score and filter videos: OUT/manifest.jsonl (one row per clip, "
        "paths relative to OUT, keep + drop_reason), OUT/errors.jsonl (inputs that failed), clip files under "
        "OUT/clips/. Reruns resume. Steps: probe split stitch static motion text watermark aesthetic caption "
        "(default: probe,split,static,motion,text). Machines: run `--shard i/n` with the same INPUTs into "
        "one OUT per shard, then `longvideo curate --merge OUT_0 OUT_1 ... -o OUT`.",
    )
    c.add_argument("inputs", nargs="*", metavar="INPUT", help="video files or folders (searched recursively)")
    c.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    c.add_argument("--steps", type=_str_list, help="comma list of steps (probe always runs)")
    c.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    c.add_argument("--shard", metavar="i/n", help="process only shard i of n (0-based) of the sorted inputs")
    c.add_argument("--config", metavar="YAML", help="a CurateConfig YAML (thresholds of every step)")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set motion.min_flow_top5=1.0 (repeatable)",
    )
    c.add_argument(
        "--merge", action="store_true", help="the INPUTs are shard output folders: join them into OUT"
    )
    c.add_argument("--retry-errors", action="store_true", help="process again the inputs in errors.jsonl")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd.cmd_curate)


def _add_convert(sub) -> None:
    from longvideo.convert.sniff import FORMATS

    c = sub.add_parser(
        "convert",
        help="convert a seed's published checkpoint into a pipeline folder",
        description="Read SRC (a source model folder, diffusers-style pipeline folder, or weights file with "
        "config.json next to it; safetensors, or legacy .pt/.ckpt read with torch.load(weights_only=True)) "
        "and write the pipeline folder DST: transformer/, vae/ and text_encoder/ + tokenizer/ when the "
        "source has them (or --vae / --text-encoder), scheduler/. What the source lacks is listed under "
        "'missing'. exvideo-svd: DST gets the extension in diffusers' names, for SVD-XT.",
    )
    c.add_argument("--from", dest="source_format", required=True, choices=FORMATS, metavar="FORMAT",
                   help=f"the source format: {', '.join(FORMATS)}")  # fmt: skip
    c.add_argument("src", metavar="SRC")
    c.add_argument("dst", metavar="DST")
    c.add_argument("--vae", metavar="DIR", help="the source's VAE folder, if not SRC/vae")
    c.add_argument("--text-encoder", metavar="DIR", help="a text encoder + tokenizer folder to copy in")
    c.set_defaults(func=cmd.cmd_convert)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(
        dest="data_command", metavar="KIND", required=True
    )
    s = data.add_parser("shapes", help="render shapes-world videos + manifest.jsonl to a folder")
    s.add_argument("-n", type=int, required=True, help="number of videos")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--frames", type=int, default=33, help="frames per video (default 33)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--include-held-out", action="store_true", help="allow the held-out (color, shape) pairs")
    s.add_argument("--held-out-only", action="store_true", help="every video has a held-out pair")
    s.add_argument("--objects", type=_int_list, help="comma list from {1,2} (default 1,2)")
    for name in ("backgrounds", "colors", "shapes", "sizes"):
        s.add_argument(f"--{name}", type=_str_list, help=f"comma list restricting {name}")
    s.add_argument("--motions", type=_str_list, help="comma list, e.g. 'moving left slowly,staying still'")
    s.add_argument("--quality", type=int, default=10, help="H.264 CRF, 0 (best) .. 51 (default 10)")
    s.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    s.set_defaults(func=cmd.cmd_data_shapes)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluation").add_subparsers(
        dest="eval_command", metavar="KIND", required=True
    )
    s = ev.add_parser("shapes", help="judge shapes-world videos against their captions (JSON)")
    s.add_argument("video", nargs="?", help="a video file (or use --manifest)")
    s.add_argument("--prompt", help="the caption to judge against (omit to only detect)")
    s.add_argument("--manifest", help="judge every row of a manifest.jsonl; prints a summary last")
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--results", help="also write per-video results to this JSONL file")
    s.set_defaults(func=cmd.cmd_eval_shapes)
    r = ev.add_parser("recon", help="VAE reconstruction PSNR/SSIM on unseen shapes-world videos")
    r.add_argument("--model", default="shapes", help="bundled name, pipeline folder or VAE folder")
    r.add_argument("--num", type=int, default=16, help="videos (default 16)")
    r.add_argument("--frames", type=int, default=33, help="frames per video, 4k+1 (default 33)")
    r.add_argument("--seed", type=int, default=10_000, help="seed of the evaluation videos")
    _add_chunk(r, default=0)
    r.add_argument("--judge", action="store_true", help="also judge the reconstructions (shapes evaluator)")
    r.add_argument("--json", action="store_true", help="print only the JSON result")
    r.set_defaults(func=cmd.cmd_eval_recon)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    b = bench.add_subparsers(dest="bench_command", metavar="KIND", required=True)
    v = b.add_parser("vae", help="encode + decode N frames; time, frames/s, peak memory (JSON last)")
    v.add_argument("--model", default="shapes")
    v.add_argument("--frames", type=int, default=65)
    v.add_argument("--height", type=int, default=64)
    v.add_argument("--width", type=int, default=64)
    _add_chunk(v, default=4)
    v.add_argument("--device", default="cpu")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd.cmd_bench_vae)


def _add_chunk(p, default: int) -> None:
    """One name for one thing in `eval recon` and `bench vae`: how the VAE streams a clip."""
    p.add_argument(
        "--chunk",
        type=_at_least(0),
        default=default,
        metavar="K",
        help=f"latent frames (4 frames each) per streamed chunk; 0 = the whole clip at once, memory growing "
        f"with its length (default {default})",
    )


def _str_list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in _str_list(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {s!r}") from None


def _at_least(low: int):
    """argparse type: an integer >= low (bad values fail before a model is loaded)."""

    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n

    return parse


def _pending(a) -> None:
    raise UserError(f"'{a.command}' is not available yet: it needs {PENDING[a.command]}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in argv
    try:
        a = build_parser().parse_args(argv)
        a.func(a)
        return 0
    except UserError as e:
        if show_tb:
            raise
        print(f"longvideo: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if show_tb:
            raise
        print(f"longvideo: error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("longvideo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `longvideo ... | head`
        return 0
    except Exception as e:
        if show_tb:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(
            f"longvideo: internal error: {type(e).__name__}: {msg} (rerun with --traceback)", file=sys.stderr
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
