"""Generation pipelines: one `VideoPipeline` for text-to-video, image-to-video and continuation (they differ
only in which latent frames are known), the `GenerationRequest` it takes (every option of one video, as
data), videos longer than the model's window generated window after window (windows.py), and the pipeline
folder it loads from and saves to."""

from longvideo.pipelines.inputs import FRAME_RULE, generated_frames
from longvideo.pipelines.request import GenerationRequest
from longvideo.pipelines.video import PipelineDefaults, VideoPipeline
from longvideo.pipelines.windows import WindowPlan

__all__ = [
    "FRAME_RULE",
    "GenerationRequest",
    "PipelineDefaults",
    "VideoPipeline",
    "WindowPlan",
    "generated_frames",
]
