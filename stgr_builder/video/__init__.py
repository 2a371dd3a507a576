"""Video stages: probe (metadata and key-frame index) and sample (plan, decode, store).

>>> from stgr_builder.video import ProbeStep, SampleStep, FrameStore
"""

from stgr_builder.video.decode import DecodedFrame, DecodeError, DecodeStats, get_decoder, read_frames
from stgr_builder.video.frames import FrameStore
from stgr_builder.video.plan import FramePlan, GopRead, plan_decode, plan_frames
from stgr_builder.video.probe import probe_image, probe_video
from stgr_builder.video.steps import ProbeStep, SampleStep

__all__ = [
    "DecodeError",
    "DecodeStats",
    "DecodedFrame",
    "FramePlan",
    "FrameStore",
    "GopRead",
    "ProbeStep",
    "SampleStep",
    "get_decoder",
    "plan_decode",
    "plan_frames",
    "probe_image",
    "probe_video",
    "read_frames",
]
