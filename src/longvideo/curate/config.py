"""The curation config: every threshold of every step, in one typed tree loadable from YAML.

    cfg = load_config(CurateConfig, "curate.yaml", ["motion.min_flow_top5=1.0"])

Defaults follow the seeds where they say something (EasyAnimate / Vchitect-2.0 / Panda-70M / Open-Sora, see
shared/reference/data_eval.md): clips of 3-10 s, ContentDetector(27, min_scene_len 15), text area above 2% of
the frame dropped. Units are stated at each field; flow is in pixels per source frame measured at a 256-pixel
short side (VBench's convention), so one threshold fits every resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longvideo.errors import UserError

# Steps in the order they run. `probe` always runs; `split` includes cutting the clip files.
STEPS = ("probe", "split", "stitch", "static", "motion", "text", "watermark", "aesthetic", "caption")
DEFAULT_STEPS = ["probe", "split", "static", "motion", "text"]
# Why a clip was dropped, in the order the checks run (a clip carries the first reason that applies).
# fmt: off
DROP_REASONS = ("too_short", "static", "low_motion", "high_motion", "text", "watermark", "aesthetic",
                "cut_failed")
VIDEO_EXTENSIONS = [".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".flv", ".wmv", ".mpg",
                    ".mpeg", ".3gp"]
# fmt: on


@dataclass
class SplitConfig:
    """Shot detection (PySceneDetect on analysis-size frames) and the clip-length rules."""

    detector: str = "content"  # "content" (ContentDetector) | "adaptive" (AdaptiveDetector)
    threshold: float = 27.0  # ContentDetector: HSV mean-difference threshold
    adaptive_threshold: float = 3.0  # AdaptiveDetector: ratio to the rolling average
    min_content_val: float = 15.0  # AdaptiveDetector: minimum content value for a cut
    window_width: int = 2  # AdaptiveDetector: frames each side of the rolling window
    min_scene_len: int = 15  # frames; closer cuts are merged (PySceneDetect's flash filter)
    min_seconds: float = 3.0  # shorter clips are kept in the manifest with drop_reason "too_short"
    max_seconds: float = 10.0  # longer shots are chopped into near-equal pieces of at most this
    # Chop points snap to a keyframe within this fraction of the piece length, so the piece can be
    # stream-copied instead of re-encoded.
    snap_keyframes: float = 0.25
    trim_frames: int = 0  # frames dropped at each end of a shot (0 keeps cuts on keyframes: stream copy)

    def validate(self) -> None:
        if self.detector not in ("content", "adaptive"):
            raise UserError(f"split.detector must be 'content' or 'adaptive', got {self.detector!r}")
        if not 0 < self.min_seconds <= self.max_seconds:
            raise UserError("split: need 0 < min_seconds <= max_seconds")
        if self.max_seconds < 2 * self.min_seconds:
            # why: a shot just over max must split into two pieces that are both >= min.
            raise UserError("split: max_seconds must be at least 2 x min_seconds")
        if self.min_scene_len < 0 or self.trim_frames < 0 or self.window_width < 1:
            raise UserError("split: min_scene_len, trim_frames >= 0 and window_width >= 1")
        if not 0 <= self.snap_keyframes < 0.5:
            raise UserError("split.snap_keyframes must be in [0, 0.5)")


@dataclass
class StaticConfig:
    """Vchitect's static filter: grayscale mean absolute difference between analysed frame pairs."""

    # gray levels (0-255) at analysis size; a pair below it is "static". Low on purpose: this step catches
    # frozen and duplicated frames; slow real motion is the motion step's to judge (a sub-pixel drift of
    # 0.2 px/frame already differs by ~0.5)
    diff_threshold: float = 0.3
    max_static_ratio: float = 0.5  # drop a clip when more than this fraction of its pairs is static

    def validate(self) -> None:
        if self.diff_threshold < 0 or not 0 <= self.max_static_ratio <= 1:
            raise UserError("static: diff_threshold >= 0 and max_static_ratio in [0, 1]")


@dataclass
class MotionConfig:
    """Dense optical flow (OpenCV DIS) on frames at most `max_gap` apart; VBench-style statistics."""

    fps: float = 8.0  # analysed frame rate (pairs are round(fps_src / fps) frames apart, capped)
    max_gap: int = 3  # why: DIS (like any flow) fails on large displacements; keep pairs close
    preset: str = "medium"  # DIS preset: "ultrafast" | "fast" | "medium"
    min_flow_top5: float = 0.5  # drop ("low_motion") when the mean top-5% magnitude is below this
    max_flow_mean: float | None = None  # drop ("high_motion") when the mean magnitude is above; None = off

    def validate(self) -> None:
        if self.fps <= 0 or self.max_gap < 1:
            raise UserError("motion: fps > 0 and max_gap >= 1")
        if self.preset not in ("ultrafast", "fast", "medium"):
            raise UserError(f"motion.preset must be ultrafast, fast or medium, got {self.preset!r}")


@dataclass
class TextConfig:
    """RapidOCR detection + recognition on the sampled frames; the text-area ratio decides."""

    max_area: float = 0.02  # drop ("text") when recognised text covers more than this fraction of a frame
    min_score: float = 0.5  # recognition confidence for a box to count (detection alone fires on texture)
    min_chars: int = 2  # boxes with fewer recognised characters do not count
    det_max_side: int = 480  # detector input: longer side scaled to this (RapidOCR's default upsamples)

    def validate(self) -> None:
        if not 0 <= self.max_area <= 1 or not 0 <= self.min_score <= 1 or self.det_max_side < 32:
            raise UserError("text: max_area and min_score in [0, 1], det_max_side >= 32")


@dataclass
class CutConfig:
    """Writing clip files: stream copy when the clip is a run of whole GOPs of H.264, else re-encode."""

    mode: str = "auto"  # "auto" | "copy" (stream copy or drop "cut_failed") | "reencode" | "none" (no files)
    which: str = "kept"  # "kept" | "all" (also write dropped clips, e.g. to inspect the filters)
    crf: int = 18  # x264 CRF for re-encodes
    preset: str = "veryfast"  # x264 preset for re-encodes
    max_short_side: int = 0  # re-encode larger clips down to this short side; 0 = keep the source size

    def validate(self) -> None:
        if self.mode not in ("auto", "copy", "reencode", "none"):
            raise UserError(f"cut.mode must be auto, copy, reencode or none, got {self.mode!r}")
        if self.which not in ("kept", "all"):
            raise UserError(f"cut.which must be 'kept' or 'all', got {self.which!r}")
        if not 0 <= self.crf <= 51 or self.max_short_side < 0 or self.max_short_side % 2:
            raise UserError("cut: crf in 0..51, max_short_side even and >= 0")


@dataclass
class PluginConfig:
    """Model-backed steps. A spec is a local transformers folder, or `py:module:factory` (a callable that
    returns the plugin), or for `embedder` the weight-free built-in "hist". Nothing is downloaded."""

    aesthetic: str = ""  # CLIP-like folder + aesthetic_head.safetensors (a stack of Linear layers)
    min_aesthetic: float = 4.5  # drop ("aesthetic") below this
    watermark: str = ""  # image-classification folder with a "watermark" label
    watermark_label: str = "watermark"  # the label whose probability is the score
    max_watermark: float = 0.8  # drop ("watermark") at or above this probability
    caption: str = ""  # image-text-to-text folder (or py: factory)
    caption_prompt: str = "Describe this video in one sentence."
    caption_max_tokens: int = 64
    embedder: str = ""  # for `stitch`: "hist", a vision folder (CLIP/SigLIP/DINO), or a py: factory
    stitch_similarity: float = 0.9  # merge adjacent shots whose boundary frames have cosine >= this
    device: str = "cpu"

    def validate(self) -> None:
        if not -1 <= self.stitch_similarity <= 1 or self.caption_max_tokens < 1:
            raise UserError("plugins: stitch_similarity in [-1, 1], caption_max_tokens >= 1")


@dataclass
class CurateConfig:
    """Everything `longvideo curate` decides with. Saved to OUT/curate.json; a rerun must match it."""

    steps: list[str] = field(default_factory=lambda: list(DEFAULT_STEPS))
    analysis_short_side: int = 144  # decode size for shot detection, static and motion (never upscaled)
    sample_frames: int = 3  # frames per clip for OCR and the model plugins (uniform inside the clip)
    sample_short_side: int = 360  # size of those frames (never upscaled)
    score_all: bool = False  # compute every score even for clips already dropped (slower; calibration)
    extensions: list[str] = field(default_factory=lambda: list(VIDEO_EXTENSIONS))  # for folder inputs
    split: SplitConfig = field(default_factory=SplitConfig)
    static: StaticConfig = field(default_factory=StaticConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    cut: CutConfig = field(default_factory=CutConfig)
    plugins: PluginConfig = field(default_factory=PluginConfig)

    def validate(self) -> CurateConfig:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise UserError(f"unknown step(s) {', '.join(unknown)}; choose from {', '.join(STEPS)}")
        if "probe" not in self.steps:
            self.steps = ["probe", *self.steps]
        self.steps = [s for s in STEPS if s in self.steps]  # canonical order, no repeats
        if "stitch" in self.steps and "split" not in self.steps:
            raise UserError("step 'stitch' needs step 'split'")
        if self.analysis_short_side < 16 or self.sample_short_side < 16 or self.sample_frames < 1:
            raise UserError("analysis_short_side and sample_short_side >= 16, sample_frames >= 1")
        for part in (self.split, self.static, self.motion, self.text, self.cut, self.plugins):
            part.validate()
        return self

    def has(self, step: str) -> bool:
        return step in self.steps
