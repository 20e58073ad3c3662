"""The `longvideo` command line.

One error style everywhere: bad input -> `longvideo: error: <one line>` on stderr, exit code 2, no
traceback (`--traceback` shows one, for bug reports). Commands print their machine-readable result (JSON)
last on stdout; progress bars go to stderr. This file builds the parser (each command's parser names its
function with `set_defaults(func=...)`); the commands themselves are in cli_commands.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

from longvideo import __version__
from longvideo import cli_commands as cmd
from longvideo.errors import UserError
from longvideo.limits import MAX_FRAMES, MAX_SEED, MAX_STEPS, MAX_VIDEOS, cpu_count

# Commands of DESIGN.md §3 that are not built yet, and the issue that brings them.
PENDING = {
    "serve": "the web UI",
}


class NotBuilt(UserError):
    """A command of DESIGN.md §3 that is not built yet: a plain one-line error, even with --traceback."""


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
        type=_ints(1, MAX_FRAMES),
        help=f"frames >= 1, up to {MAX_FRAMES:,} (default: the model's default length). A count that is not "
        "4k+1 is rounded up to the next 4k+1, generated, and cut back to the count asked for. More than the "
        "window: generated window after window, each continuing from the last --overlap latent frames of the "
        "one before, and written as decoded (memory does not grow with the length)",
    )
    g.add_argument(
        "--window",
        type=_ints(1, MAX_FRAMES),
        help="frames the model generates at once, rounded up to 4k+1 like --frames (default: the model's "
        "window, e.g. 33 = 9 latent frames; 129 after 4x ExVideo post-tuning)",
    )
    g.add_argument(
        "--overlap",
        type=_ints(0, MAX_FRAMES),
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
        type=_floats(None),
        metavar="T",
        help="against drift: noise the known latent frames to diffusion time T in [0, 1) (default 0 = off; "
        "only for models trained with it)",
    )
    size = "a multiple of 16 for the presets; what does not fit in memory is refused (default: the model's)"
    g.add_argument("--height", type=int, help=size)
    g.add_argument("--width", type=int, help=size)
    g.add_argument(
        "--steps",
        type=_int_upto(MAX_STEPS),
        help=f"sampling steps, at most {MAX_STEPS:,} (default: the model's)",
    )
    g.add_argument(
        "--guidance",
        type=_floats(1.0),
        help="classifier-free guidance scale >= 1, 1 = off (default: the model's)",
    )
    g.add_argument("--seed", type=_seed, help="the same seed gives the same video, 0..2**64-1 (default 0)")
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
    c.add_argument("--workers", type=_workers, default=1, help="worker processes (default 1)")
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
    c.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST (that convert wrote) when done"
    )
    c.set_defaults(func=cmd.cmd_convert)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(
        dest="data_command", metavar="KIND", required=True
    )
    s = data.add_parser("shapes", help="render shapes-world videos + manifest.jsonl to a folder")
    s.add_argument("-n", type=_int_upto(MAX_VIDEOS), required=True, help="number of videos")
    s.add_argument("-o", "--output", required=True, help="output folder")
    s.add_argument("--frames", type=_int_upto(MAX_FRAMES), default=33, help="frames per video (default 33)")
    s.add_argument("--seed", type=_seed, default=0, help="0..2**64-1 (default 0)")
    s.add_argument("--include-held-out", action="store_true", help="allow the held-out (color, shape) pairs")
    s.add_argument("--held-out-only", action="store_true", help="every video has a held-out pair")
    s.add_argument("--objects", type=_int_list, help="comma list from {1,2} (default 1,2)")
    for name in ("backgrounds", "colors", "shapes", "sizes"):
        s.add_argument(f"--{name}", type=_str_list, help=f"comma list restricting {name}")
    s.add_argument("--motions", type=_str_list, help="comma list, e.g. 'moving left slowly,staying still'")
    s.add_argument("--quality", type=_ints(0, 51), default=10, help="H.264 CRF, 0 (best) .. 51 (default 10)")
    s.add_argument("--workers", type=_workers, default=1, help="encoding processes (default 1)")
    s.set_defaults(func=cmd.cmd_data_shapes)


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluation").add_subparsers(
        dest="eval_command", metavar="KIND", required=True
    )
    s = ev.add_parser("shapes", help="judge shapes-world videos against their captions (JSON)")
    s.add_argument("video", nargs="?", help="a video file (or use --manifest)")
    s.add_argument("--prompt", help="the caption to judge against (omit to only detect)")
    s.add_argument(
        "--manifest", type=_text_file, help="judge every row of a manifest.jsonl; prints a summary last"
    )
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--results", help="also write per-video results to this JSONL file")
    s.set_defaults(func=cmd.cmd_eval_shapes)
    r = ev.add_parser("recon", help="VAE reconstruction PSNR/SSIM on unseen shapes-world videos")
    r.add_argument("--model", default="shapes", help="bundled name, pipeline folder or VAE folder")
    r.add_argument("--num", type=_int_upto(MAX_VIDEOS), default=16, help="videos (default 16)")
    r.add_argument(
        "--frames", type=_int_upto(MAX_FRAMES), default=33, help="frames per video, 4k+1 (default 33)"
    )
    r.add_argument("--seed", type=_seed, default=10_000, help="seed of the evaluation videos")
    _add_chunk(r, default=0)
    r.add_argument("--judge", action="store_true", help="also judge the reconstructions (shapes evaluator)")
    r.add_argument("--json", action="store_true", help="print only the JSON result")
    r.set_defaults(func=cmd.cmd_eval_recon)


def _add_bench(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks")
    b = bench.add_subparsers(dest="bench_command", metavar="KIND", required=True)
    v = b.add_parser("vae", help="encode + decode N frames; time, frames/s, peak memory (JSON last)")
    v.add_argument("--model", default="shapes")
    v.add_argument("--frames", type=_int_upto(MAX_FRAMES), default=65, help="4k+1 frames (default 65)")
    v.add_argument("--height", type=int, default=64, help="a multiple of 8, >= 48 (default 64)")
    v.add_argument("--width", type=int, default=64, help="a multiple of 8, >= 48 (default 64)")
    _add_chunk(v, default=4)
    v.add_argument("--device", type=_device, default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd.cmd_bench_vae)


def _add_chunk(p, default: int) -> None:
    """One name for one thing in `eval recon` and `bench vae`: how the VAE streams a clip."""
    p.add_argument(
        "--chunk",
        type=_ints(0, MAX_FRAMES),
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


# argparse types: bad values fail here, before a model is loaded or a file written. Caps that only cost
# time are limits.py's; sizes that cost memory are checked there against the machine.


def _ints(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] (high None: no cap)."""

    def parse(s: str) -> int:
        try:
            n = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        if high is not None and n > high:
            raise argparse.ArgumentTypeError(
                f"must be <= {high:,}, got {s if len(s) < 30 else s[:27] + '...'}"
            )
        return n

    return parse


def _int_upto(high: int | None):
    """argparse type: `int`, capped at `high`; the lower bound is the command's own check (its words)."""

    def parse(s: str) -> int:
        n = int(s)  # a ValueError: argparse's own "invalid int value: 'x'"
        if high is not None and n > high:
            raise argparse.ArgumentTypeError(
                f"must be <= {high:,}, got {s if len(s) < 30 else s[:27] + '...'}"
            )
        return n

    parse.__name__ = "int"
    return parse


def _seed(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {s!r}") from None
    if not 0 <= n <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is an integer in 0..2**64-1, got {s[:30]}")
    return n


def _floats(low: float | None):
    """argparse type: a finite number (>= low when given; None: the command's own check words it)."""

    def parse(s: str) -> float:
        try:
            x = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        if not math.isfinite(x):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {s}")
        if low is not None and x < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {x:g}")
        return x

    return parse


def _workers(s: str) -> int:
    """Worker processes: up to 4x the CPUs this process may use (at least 8); more only add memory. The
    lower bound is the command's own check."""
    return _int_upto(max(8, 4 * cpu_count()))(s)


def _device(s: str) -> str:
    """A torch device this command can run on: cpu, cuda or cuda:N."""
    kind, _, index = s.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {s!r}")
    return s


def _text_file(s: str) -> str:
    """A path whose file, if there is one, is UTF-8 text (a missing file is the command's to report)."""
    import codecs
    from pathlib import Path

    p = Path(s)
    if p.is_file():
        try:
            with p.open("rb") as f:
                head = f.read(1 << 20)
            codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
        except UnicodeDecodeError:
            raise argparse.ArgumentTypeError(f"{s} is not a text file (binary data?)") from None
        except OSError as e:
            raise argparse.ArgumentTypeError(f"cannot read {s}: {e.strerror or e}") from None
        if b"\0" in head:
            raise argparse.ArgumentTypeError(f"{s} is not a text file (binary data?)")
    return s


def _pending(a) -> None:
    raise NotBuilt(f"'{a.command}' is not available yet: it needs {PENDING[a.command]}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_tb = "--traceback" in argv
    try:
        a = build_parser().parse_args(argv)
        from longvideo.outputs import command_guard

        with command_guard():  # every command: SIGTERM unwinds (temp files go), bars end before an error
            a.func(a)
        return 0
    except UserError as e:
        if show_tb and not isinstance(e, NotBuilt):
            raise
        return _fail(f"longvideo: error: {_first_line(e)}", 2)
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        if show_tb:
            raise
        return _fail(f"longvideo: error: {e.strerror or e}: {e.filename}", 2)
    except UnicodeDecodeError as e:  # a binary file where a text file was expected, read deep inside
        if show_tb:
            raise
        return _fail(f"longvideo: error: a file read is not UTF-8 text (binary data?): {e.reason}", 2)
    except KeyboardInterrupt:
        return _fail("longvideo: interrupted", 130)
    except BrokenPipeError:  # e.g. `longvideo ... | head`
        return 0
    except Exception as e:
        if show_tb:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        return _fail(f"longvideo: internal error: {type(e).__name__}: {msg} (rerun with --traceback)", 1)


def _fail(line: str, code: int) -> int:
    """Print the one error line and return the exit code. A progress bar still drawn (the error came in
    the middle of a loop) is closed first, so the error never shares its line."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()
    print(line, file=sys.stderr)
    return code


def _first_line(e: Exception) -> str:
    """One line, always: a message that grew a second line would break the error contract."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return " ".join(lines) if lines else type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
