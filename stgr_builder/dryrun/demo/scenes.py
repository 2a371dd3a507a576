"""Backgrounds and scenes for the embedded demo, and the training frames of the shipped detector:
sprites (``sprites.py``) placed on a procedural background.

>>> rgb, boxes = render_training_frame(np.random.default_rng(0))
>>> rgb.shape, boxes[0][0] in DEMO_CLASSES
((240, 320, 3), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from stgr_builder.dryrun.demo.sprites import (
    BACKGROUND_KINDS,
    CLASS_COLOURS,
    DEMO_CLASSES,
    FLYING,
    SIZE_RANGE,
    Sprite,
    jitter,
    make_sprites,
    paste,
    shade,
    smooth_noise,
    sprite_box,
)

# ---------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------


@dataclass
class Background:
    """A static scene; objects on the ground keep their feet below ``horizon``."""

    rgb: np.ndarray  # float32 H x W x 3
    horizon: int
    kind: str


def _vertical_gradient(h: int, w: int, top, bottom) -> np.ndarray:
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    grad = np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t
    return np.repeat(grad, w, axis=1)


def _sky(rng: np.random.Generator, h: int, w: int, dusk: bool) -> np.ndarray:
    if dusk:
        sky = _vertical_gradient(h, w, jitter(rng, (60, 70, 140)), jitter(rng, (240, 150, 90)))
    else:
        sky = _vertical_gradient(h, w, jitter(rng, (90, 145, 220)), jitter(rng, (190, 215, 240)))
    clouds = smooth_noise(rng, h, w, 24) + 0.5 * smooth_noise(rng, h, w, 9)
    amount = np.clip(clouds - rng.uniform(0.2, 0.6), 0, 1)[..., None]
    return sky * (1 - amount) + np.asarray((245, 245, 248), np.float32) * amount


def _textured(rng: np.random.Generator, h: int, w: int, base, coarse: float, fine: float) -> np.ndarray:
    base = np.asarray(jitter(rng, base), np.float32)
    tex = 1.0 + coarse * smooth_noise(rng, h, w, 16) + fine * rng.standard_normal((h, w)).astype(np.float32)
    return base * tex[..., None]


def _draw_trees(rng: np.random.Generator, img: np.ndarray, horizon: int, count: int) -> None:
    h, w = img.shape[:2]
    for _ in range(count):
        x = int(rng.uniform(0, w))
        size = int(rng.uniform(0.05, 0.1) * h)
        top = horizon - size * 2
        trunk = jitter(rng, (90, 60, 35), 10)
        leaves = jitter(rng, (40, 105, 45), 20)
        cv2.rectangle(img, (x - size // 6, horizon - size), (x + size // 6, horizon + 2), trunk, -1, cv2.LINE_AA)
        cv2.circle(img, (x, top + size), size, leaves, -1, cv2.LINE_AA)
        cv2.circle(img, (x - size // 2, top + size + size // 3), int(size * 0.7), shade(leaves, 0.85), -1, cv2.LINE_AA)


def _draw_buildings(rng: np.random.Generator, img: np.ndarray, horizon: int) -> None:
    h, w = img.shape[:2]
    x = int(rng.uniform(-20, 0))
    while x < w:
        bw = int(rng.uniform(0.12, 0.25) * w)
        bh = int(rng.uniform(0.15, 0.35) * h)
        colour = jitter(rng, (150, 140, 130), 35)
        cv2.rectangle(img, (x, horizon - bh), (x + bw, horizon), colour, -1)
        win = shade(colour, 0.55)
        for wy in range(horizon - bh + 6, horizon - 8, 12):
            for wx in range(x + 5, x + bw - 8, 11):
                cv2.rectangle(img, (wx, wy), (wx + 5, wy + 6), win, -1)
        x += bw + int(rng.uniform(0, 10))


def make_background(rng: np.random.Generator, width: int, height: int, kind: str | None = None) -> Background:
    """A textured scene: sky with clouds over grass, a street, a beach or a dusk meadow.

    >>> make_background(np.random.default_rng(0), 320, 240, "park").rgb.shape
    (240, 320, 3)
    """
    kind = kind or str(rng.choice(BACKGROUND_KINDS))
    h, w = height, width
    horizon = int(rng.uniform(0.36, 0.48) * h)
    img = _sky(rng, h, w, dusk=kind == "dusk")
    ground_h = h - horizon
    if kind == "street":
        ground = _textured(rng, ground_h, w, (105, 105, 110), 0.08, 0.06)
        img[horizon:] = ground
        img = np.ascontiguousarray(img)
        _draw_buildings(rng, img, horizon)
        cv2.rectangle(img, (0, horizon), (w, horizon + max(3, ground_h // 8)), jitter(rng, (170, 165, 155)), -1)
        lane_y = horizon + int(ground_h * rng.uniform(0.45, 0.6))
        for x in range(int(rng.uniform(-30, 0)), w, 40):
            cv2.rectangle(img, (x, lane_y), (x + 22, lane_y + 3), (230, 230, 225), -1)
    elif kind == "beach":
        sea_h = max(4, int(ground_h * 0.3))
        img[horizon : horizon + sea_h] = _textured(rng, sea_h, w, (40, 110, 170), 0.12, 0.04)
        img[horizon + sea_h :] = _textured(rng, ground_h - sea_h, w, (220, 200, 150), 0.1, 0.07)
        img = np.ascontiguousarray(img)
    else:
        grass_colour = (80, 150, 60) if kind == "park" else (70, 110, 55)
        img[horizon:] = _textured(rng, ground_h, w, grass_colour, 0.16, 0.12)
        img = np.ascontiguousarray(img)
        hills = (horizon - 4 - 10 * (1 + smooth_noise(rng, 1, w, 40)[0])).astype(np.int32)
        for x in range(w):
            img[hills[x] : horizon, x] = shade(jitter(rng, grass_colour, 4), 0.8)
        _draw_trees(rng, img, horizon + 2, int(rng.integers(1, 5)))
    if kind == "dusk":
        img *= 0.85
    return Background(np.clip(img, 0, 255).astype(np.float32), horizon, kind)


# ---------------------------------------------------------------------------------------
# Training frames for the shipped detector
# ---------------------------------------------------------------------------------------


def object_size(rng: np.random.Generator, cls: str, frame_w: int, frame_h: int) -> float:
    """A size (pixels) for a new object of ``cls`` in a frame of this size (see SIZE_RANGE)."""
    low, high = SIZE_RANGE[cls]
    return float(rng.uniform(low, high) * (frame_h if cls == "person" else frame_w))


def overlap(a: list[int], b: list[int]) -> float:
    """Share of the smaller box covered by the other (0 = apart, 1 = one inside the other)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / smaller if smaller > 0 else 0.0


def place(
    rng: np.random.Generator, cls: str, sprite_w: int, sprite_h: int, bg: Background, ground_from: float = 0.12
) -> tuple[int, int]:
    """A top-left position: ground objects stand below the horizon, birds fly above it.

    ``ground_from``: the highest a ground object's feet go, as a fraction of the ground
    below the horizon (the demo videos keep them off the far edge, the sea, the pavement).
    """
    h, w = bg.rgb.shape[:2]
    x = int(rng.uniform(0, max(1, w - sprite_w)))
    if cls in FLYING:
        y = int(rng.uniform(0, max(1, min(h - sprite_h, bg.horizon + 0.15 * h - sprite_h * 0.5))))
    else:
        low = max(bg.horizon + ground_from * (h - bg.horizon), sprite_h * 0.6)
        foot = rng.uniform(min(low, h - 1), h)
        y = int(min(foot, h) - sprite_h)
    return x, y


def render_training_frame(
    rng: np.random.Generator, width: int = 320, height: int = 240, max_objects: int = 4
) -> tuple[np.ndarray, list[tuple[str, list[int]]]]:
    """One random scene with its labels: RGB uint8 and ``[(class, [x1, y1, x2, y2]), ...]`` in pixels.

    Classes may repeat here (unlike in the demo videos), objects overlap little, and a few
    stick out of the frame, so the detector sees what the videos show and a bit more.

    >>> rgb, labels = render_training_frame(np.random.default_rng(1))
    >>> all(0 <= b[0] < b[2] <= 320 for _, b in labels)
    True
    """
    bg = make_background(rng, width, height)
    frame = bg.rgb.copy()
    n = int(rng.integers(0, max_objects + 1)) if rng.random() < 0.08 else int(rng.integers(1, max_objects + 1))
    placed: list[tuple[float, str, Sprite, int, int, list[int]]] = []
    for _ in range(n):
        cls = str(rng.choice(DEMO_CLASSES))
        colour = str(rng.choice(CLASS_COLOURS[cls]))
        poses = make_sprites(rng, cls, colour, object_size(rng, cls, width, height), n_poses=4)
        sprite = poses[int(rng.integers(len(poses)))]
        if rng.random() < 0.5:
            sprite = sprite.flipped()
        sh, sw = sprite.alpha.shape
        for _try in range(12):
            x, y = place(rng, cls, sw, sh, bg)
            if rng.random() < 0.1:  # partly outside the frame, at most ~35% cut off
                x += int(rng.choice([-1, 1]) * rng.uniform(0.1, 0.35) * sw)
            bx1, by1, bx2, by2 = sprite_box(sprite)
            box = [x + bx1, y + by1, x + bx2, y + by2]
            if all(overlap(box, other[5]) < 0.3 for other in placed):
                placed.append((y + sh if cls not in FLYING else -1.0, cls, sprite, x, y, box))
                break
    labels: list[tuple[str, list[int]]] = []
    for _, cls, sprite, x, y, _box in sorted(placed, key=lambda item: item[0]):  # far ones first
        visible = paste(frame, sprite, x, y)
        if visible is not None:
            labels.append((cls, visible))
    return np.clip(frame, 0, 255).astype(np.uint8), labels
