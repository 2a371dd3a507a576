"""Procedural sprites for the embedded demo (and the shipped detector's training); the
backgrounds and the scenes they make are in ``scenes.py``.

Everything is drawn with OpenCV primitives at twice the size and downsampled, so edges are
smooth; each object gets texture noise and a colour jittered around a named colour, so a
detector has to learn shapes, not one exact RGB value. Sprites are premultiplied RGBA and
face right; a mover flips them when it goes left.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: The classes of the demo (and of the shipped detector), in the detector's class-id order.
DEMO_CLASSES: tuple[str, ...] = ("car", "ball", "person", "bird", "dog")

#: Object classes that live in the sky; the others stand on the ground.
FLYING = frozenset({"bird"})

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 35, 35),
    "blue": (35, 75, 200),
    "green": (45, 150, 60),
    "yellow": (230, 200, 40),
    "white": (232, 232, 228),
    "black": (38, 38, 44),
    "orange": (238, 128, 32),
    "purple": (125, 55, 165),
    "brown": (125, 80, 45),
    "grey": (140, 142, 148),
}

#: Colours each class is drawn in (names are what the QA asks about).
CLASS_COLOURS: dict[str, tuple[str, ...]] = {
    "car": ("red", "blue", "green", "yellow", "white", "black", "orange", "grey"),
    "ball": ("red", "blue", "green", "yellow", "orange", "purple"),
    "person": ("red", "blue", "green", "yellow", "white", "orange", "purple"),
    "bird": ("blue", "red", "yellow", "black", "brown"),
    "dog": ("brown", "black", "white", "grey", "orange"),
}

#: Size range per class: width as a fraction of frame width (person: height of frame height).
SIZE_RANGE: dict[str, tuple[float, float]] = {
    "car": (0.26, 0.36),
    "ball": (0.12, 0.17),
    "person": (0.42, 0.58),
    "bird": (0.15, 0.23),
    "dog": (0.19, 0.27),
}

BACKGROUND_KINDS: tuple[str, ...] = ("park", "street", "beach", "dusk")

_SS = 2  # supersampling factor of the sprite canvas


# ---------------------------------------------------------------------------------------
# Noise and colour helpers
# ---------------------------------------------------------------------------------------


def smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Value noise in roughly [-1, 1] with features about ``cell`` pixels wide.

    >>> smooth_noise(np.random.default_rng(0), 24, 32, 8).shape
    (24, 32)
    """
    grid = rng.standard_normal((height // cell + 3, width // cell + 3)).astype(np.float32)
    big = cv2.resize(grid, ((width // cell + 3) * cell, (height // cell + 3) * cell), interpolation=cv2.INTER_CUBIC)
    return np.clip(big[cell : cell + height, cell : cell + width] * 0.6, -1.5, 1.5)


def jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 18) -> tuple[int, int, int]:
    """The colour moved a little, so one colour name covers many shades."""
    red, green, blue = (int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)
    return red, green, blue


def shade(colour: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    red, green, blue = (int(np.clip(c * factor, 0, 255)) for c in colour[:3])
    return red, green, blue


# ---------------------------------------------------------------------------------------
# Sprites
# ---------------------------------------------------------------------------------------


@dataclass
class Sprite:
    """Premultiplied RGB (float32, H x W x 3) with alpha (float32, H x W, 0..1)."""

    rgb: np.ndarray
    alpha: np.ndarray

    def flipped(self) -> Sprite:
        return Sprite(self.rgb[:, ::-1].copy(), self.alpha[:, ::-1].copy())


class _Canvas:
    """Draws shapes into a colour layer and a coverage mask at once, supersampled."""

    def __init__(self, width: float, height: float):
        self.width, self.height = int(round(width)), int(round(height))
        self.rgb = np.zeros((self.height * _SS, self.width * _SS, 3), np.uint8)
        self.mask = np.zeros((self.height * _SS, self.width * _SS), np.uint8)

    def _p(self, points) -> np.ndarray:
        return (np.asarray(points, np.float64) * _SS).round().astype(np.int32)

    def poly(self, points, colour) -> None:
        pts = [self._p(points)]
        cv2.fillPoly(self.rgb, pts, colour, cv2.LINE_AA)
        cv2.fillPoly(self.mask, pts, 255, cv2.LINE_AA)

    def ellipse(self, centre, axes, colour, angle: float = 0.0) -> None:
        c = tuple(int(v) for v in self._p(centre))
        a = tuple(max(1, int(v)) for v in self._p(axes))
        cv2.ellipse(self.rgb, c, a, angle, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.ellipse(self.mask, c, a, angle, 0, 360, 255, -1, cv2.LINE_AA)

    def circle(self, centre, radius: float, colour) -> None:
        self.ellipse(centre, (radius, radius), colour)

    def line(self, p1, p2, thickness: float, colour) -> None:
        a, b = (tuple(int(v) for v in self._p(p)) for p in (p1, p2))
        cv2.line(self.rgb, a, b, colour, max(1, int(thickness * _SS)), cv2.LINE_AA)
        cv2.line(self.mask, a, b, 255, max(1, int(thickness * _SS)), cv2.LINE_AA)

    def finish(self, rng: np.random.Generator, texture: float = 0.12, clip_mask: np.ndarray | None = None) -> Sprite:
        """Add texture noise and downsample to a premultiplied sprite."""
        h, w = self.mask.shape
        rgb = self.rgb.astype(np.float32)
        grain = 1.0 + texture * smooth_noise(rng, h, w, 6 * _SS) + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
        rgb *= grain[..., None]
        mask = self.mask.astype(np.float32) / 255.0
        if clip_mask is not None:
            mask = mask * clip_mask
            rgb = rgb * clip_mask[..., None]
        # The drawn colour already blends with black at anti-aliased edges: premultiplied.
        size = (self.width, self.height)
        out_rgb = cv2.resize(np.clip(rgb, 0, 255), size, interpolation=cv2.INTER_AREA)
        out_alpha = cv2.resize(mask, size, interpolation=cv2.INTER_AREA)
        return Sprite(out_rgb, np.clip(out_alpha, 0.0, 1.0))


def _car(rng: np.random.Generator, width: float, colour, n_poses: int) -> list[Sprite]:
    w, h = width, width * 0.46
    body, dark = colour, shade(colour, 0.55)
    glass = jitter(rng, (150, 185, 210), 15)
    tyre, rim = (28, 28, 30), jitter(rng, (175, 175, 180), 10)
    r = 0.2 * h
    wheels = ((0.22 * w, h - r - 0.5), (0.78 * w, h - r - 0.5))
    roof = rng.uniform(0.05, 0.14)
    poses = []
    for pose in range(n_poses):
        c = _Canvas(w, h)
        # lower body with a sloped bonnet and a rounded boot
        c.poly(
            [
                (0.02 * w, 0.5 * h),
                (0.2 * w, 0.44 * h),
                (0.72 * w, 0.42 * h),
                (0.96 * w, 0.52 * h),
                (0.99 * w, 0.72 * h),
                (0.97 * w, 0.84 * h),
                (0.03 * w, 0.84 * h),
                (0.0, 0.7 * h),
            ],
            body,
        )
        c.poly([(0.22 * w, 0.46 * h), (0.32 * w, roof * h), (0.62 * w, roof * h), (0.76 * w, 0.46 * h)], body)
        c.poly(
            [(0.27 * w, 0.44 * h), (0.35 * w, (roof + 0.07) * h), (0.46 * w, (roof + 0.07) * h), (0.46 * w, 0.44 * h)],
            glass,
        )
        c.poly(
            [(0.49 * w, 0.44 * h), (0.49 * w, (roof + 0.07) * h), (0.6 * w, (roof + 0.07) * h), (0.71 * w, 0.44 * h)],
            glass,
        )
        c.line((0.475 * w, 0.46 * h), (0.475 * w, 0.8 * h), 0.012 * w + 0.5, dark)
        c.line((0.05 * w, 0.62 * h), (0.95 * w, 0.62 * h), 0.01 * w + 0.5, dark)
        c.ellipse((0.955 * w, 0.58 * h), (0.025 * w, 0.04 * h), (250, 235, 140))
        c.ellipse((0.025 * w, 0.58 * h), (0.015 * w, 0.04 * h), (200, 20, 20))
        c.line((0.0, 0.8 * h), (0.12 * w, 0.8 * h), 0.03 * h, (45, 45, 48))
        c.line((0.88 * w, 0.8 * h), (w, 0.8 * h), 0.03 * h, (45, 45, 48))
        angle = pose * np.pi / (2 * max(1, n_poses))  # spokes turn between poses
        for cx, cy in wheels:
            c.circle((cx, cy), r, tyre)
            c.circle((cx, cy), r * 0.55, rim)
            for k in range(3):
                a = angle + k * np.pi / 3
                dx, dy = np.cos(a) * r * 0.5, np.sin(a) * r * 0.5
                c.line((cx - dx, cy - dy), (cx + dx, cy + dy), max(1.0, r * 0.12), (90, 90, 95))
        poses.append(c.finish(rng, texture=0.1))
    return poses


def _ball(rng: np.random.Generator, width: float, colour, n_poses: int) -> list[Sprite]:
    d = width
    r = d / 2
    second = jitter(rng, (240, 240, 235) if rng.random() < 0.6 else COLOURS[rng.choice(["blue", "red", "yellow"])], 10)
    n_stripes = int(rng.integers(2, 4))
    yy, xx = np.mgrid[0 : int(round(d)) * _SS, 0 : int(round(d)) * _SS].astype(np.float32) / _SS
    dist = np.sqrt((xx - r + 0.5 / _SS) ** 2 + (yy - r + 0.5 / _SS) ** 2) / r
    disc = np.clip((1.0 - dist) * r * _SS, 0, 1).astype(np.float32)  # anti-aliased disc
    light = np.clip(
        1.15 - 0.55 * np.sqrt(np.clip(((xx - 0.35 * d) ** 2 + (yy - 0.3 * d) ** 2) / (r * r), 0, 4)), 0.45, 1.2
    )
    poses = []
    for pose in range(n_poses):
        c = _Canvas(d, d)
        c.circle((r, r), r * 1.2, colour)
        angle = pose * np.pi / n_poses
        ux, uy = np.cos(angle), np.sin(angle)
        for k in range(n_stripes):
            off = (k - (n_stripes - 1) / 2) * d * 0.34
            cx, cy = r - uy * off, r + ux * off
            c.line((cx - ux * d, cy - uy * d), (cx + ux * d, cy + uy * d), d * 0.11, second)
        c.rgb = np.clip(c.rgb.astype(np.float32) * light[..., None], 0, 255).astype(np.uint8)
        c.circle((0.33 * d, 0.3 * d), 0.08 * d, (250, 250, 250))
        poses.append(c.finish(rng, texture=0.06, clip_mask=disc))
    return poses


def _person(rng: np.random.Generator, height: float, colour, n_poses: int) -> list[Sprite]:
    h = height
    w = h * 0.44
    skin = jitter(rng, [(236, 196, 164), (198, 140, 100), (140, 95, 65), (90, 60, 42)][rng.integers(4)], 10)
    hair = jitter(rng, [(30, 25, 20), (110, 70, 30), (200, 170, 90), (60, 40, 30)][rng.integers(4)], 10)
    trousers = jitter(rng, [(40, 50, 90), (40, 40, 45), (110, 95, 70), (80, 80, 85)][rng.integers(4)], 10)
    shoes = (30, 28, 26)
    cx = w / 2
    limb = 0.075 * h
    poses = []
    for pose in range(n_poses):
        swing = np.sin(2 * np.pi * pose / n_poses) * 0.5  # walking phase
        c = _Canvas(w, h)
        hip, foot_y = (cx, 0.56 * h), 0.95 * h
        leg = foot_y - hip[1]
        for side in (1, -1):
            fx = cx + side * swing * leg * 0.55
            c.line(hip, (fx, foot_y), limb, shade(trousers, 1.0 if side > 0 else 0.8))
            c.ellipse((fx + 0.03 * h, foot_y + 0.01 * h), (0.06 * h, 0.025 * h), shoes)
        c.poly(
            [
                (cx - 0.15 * w * 1.5, 0.22 * h),
                (cx + 0.15 * w * 1.5, 0.22 * h),
                (cx + 0.13 * w * 1.5, 0.58 * h),
                (cx - 0.13 * w * 1.5, 0.58 * h),
            ],
            colour,
        )
        shoulder_y, hand_y = 0.25 * h, 0.52 * h
        for side in (1, -1):
            sx = cx + side * 0.2 * w
            hx = sx - side * 0.0 + -side * swing * 0.35 * h * 0.5
            c.line((sx, shoulder_y), (hx + side * 0.05 * w, hand_y), limb * 0.8, shade(colour, 0.85))
            c.circle((hx + side * 0.05 * w, hand_y), limb * 0.55, skin)
        c.line((cx, 0.17 * h), (cx, 0.23 * h), limb * 0.8, skin)
        c.circle((cx, 0.1 * h), 0.085 * h, skin)
        c.ellipse((cx - 0.01 * h, 0.055 * h), (0.085 * h, 0.045 * h), hair)
        c.circle((cx + 0.045 * h, 0.1 * h), 0.01 * h + 0.3, (20, 20, 20))
        poses.append(c.finish(rng, texture=0.1))
    return poses


def _bird(rng: np.random.Generator, width: float, colour, n_poses: int) -> list[Sprite]:
    w = width
    h = w * 0.72
    belly = shade(colour, 1.35) if sum(colour) < 500 else shade(colour, 0.85)
    wing_colour = shade(colour, 0.7)
    beak = jitter(rng, (240, 160, 30), 10)
    poses = []
    for pose in range(n_poses):
        phase = np.cos(2 * np.pi * pose / n_poses)  # 1 = wings up, -1 = wings down
        c = _Canvas(w, h)
        body_c = (0.48 * w, 0.56 * h)
        c.poly([(0.2 * w, 0.56 * h), (0.02 * w, 0.44 * h), (0.04 * w, 0.7 * h)], wing_colour)  # tail
        c.ellipse(body_c, (0.3 * w, 0.15 * h), colour, angle=-8)
        c.ellipse((0.5 * w, 0.62 * h), (0.2 * w, 0.08 * h), belly, angle=-8)
        c.circle((0.78 * w, 0.46 * h), 0.11 * w, colour)
        c.poly([(0.87 * w, 0.42 * h), (0.99 * w, 0.48 * h), (0.87 * w, 0.52 * h)], beak)
        c.circle((0.81 * w, 0.43 * h), 0.02 * w + 0.4, (15, 15, 15))
        tip_y = 0.56 * h - phase * 0.52 * h
        c.poly(
            [(0.34 * w, 0.52 * h), (0.6 * w, 0.52 * h), (0.42 * w, tip_y), (0.3 * w, tip_y + 0.05 * h * phase)],
            wing_colour,
        )
        poses.append(c.finish(rng, texture=0.14))
    return poses


def _dog(rng: np.random.Generator, width: float, colour, n_poses: int) -> list[Sprite]:
    w = width
    h = w * 0.68
    dark = shade(colour, 0.55) if sum(colour) > 200 else shade(colour, 2.2)
    spots = rng.random() < 0.4
    leg_t = 0.075 * w
    poses = []
    for pose in range(n_poses):
        swing = np.sin(2 * np.pi * pose / n_poses) * 0.07 * w
        c = _Canvas(w, h)
        c.line((0.2 * w, 0.4 * h), (0.04 * w, 0.12 * h + swing * 0.3), 0.05 * w, colour)  # tail
        for x0, s in ((0.25, 1), (0.33, -1), (0.62, -1), (0.7, 1)):
            c.line((x0 * w, 0.5 * h), (x0 * w + s * swing, 0.93 * h), leg_t, colour if s > 0 else shade(colour, 0.85))
            c.ellipse((x0 * w + s * swing + 0.02 * w, 0.95 * h), (0.04 * w, 0.025 * h), dark)
        c.ellipse((0.47 * w, 0.45 * h), (0.3 * w, 0.16 * h), colour)
        if spots:
            for _ in range(3):
                c.ellipse((rng.uniform(0.3, 0.62) * w, rng.uniform(0.38, 0.5) * h), (0.05 * w, 0.04 * h), dark)
        c.line((0.7 * w, 0.4 * h), (0.8 * w, 0.25 * h), 0.12 * w, colour)  # neck
        c.circle((0.82 * w, 0.22 * h), 0.12 * w, colour)
        c.ellipse((0.93 * w, 0.27 * h), (0.065 * w, 0.045 * w), shade(colour, 0.9))
        c.circle((0.985 * w, 0.255 * h), 0.018 * w + 0.4, (15, 12, 12))
        c.circle((0.85 * w, 0.18 * h), 0.018 * w + 0.4, (15, 12, 12))
        c.poly([(0.74 * w, 0.12 * h), (0.8 * w, 0.1 * h), (0.76 * w, 0.4 * h), (0.71 * w, 0.35 * h)], dark)  # ear
        poses.append(c.finish(rng, texture=0.16))
    return poses


_MAKERS = {"car": _car, "ball": _ball, "person": _person, "bird": _bird, "dog": _dog}


def make_sprites(rng: np.random.Generator, cls: str, colour_name: str, size: float, n_poses: int = 4) -> list[Sprite]:
    """Poses of one object (walk cycle, wing flaps, spinning stripes, turning wheels).

    ``size`` is the width in pixels (for a person: the height).

    >>> poses = make_sprites(np.random.default_rng(0), "car", "red", 100)
    >>> len(poses), poses[0].rgb.shape
    (4, (46, 100, 3))
    """
    colour = jitter(rng, COLOURS[colour_name])
    return _MAKERS[cls](rng, size, colour, n_poses)


def sprite_box(sprite: Sprite) -> tuple[int, int, int, int]:
    """Tight box of the visible pixels (alpha > 0.5) inside the sprite: x1, y1, x2, y2 (exclusive)."""
    ys, xs = np.nonzero(sprite.alpha > 0.5)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def paste(frame: np.ndarray, sprite: Sprite, x: int, y: int) -> list[int] | None:
    """Composite ``sprite`` with its top-left at (x, y) into ``frame`` (float32, in place).

    Returns the visible box [x1, y1, x2, y2] in frame pixels (clipped), or None when no
    pixel of the object lands in the frame.
    """
    fh, fw = frame.shape[:2]
    sh, sw = sprite.alpha.shape
    x1, y1, x2, y2 = max(0, x), max(0, y), min(fw, x + sw), min(fh, y + sh)
    if x1 >= x2 or y1 >= y2:
        return None
    alpha = sprite.alpha[y1 - y : y2 - y, x1 - x : x2 - x]
    region = frame[y1:y2, x1:x2]
    region *= 1.0 - alpha[..., None]
    region += sprite.rgb[y1 - y : y2 - y, x1 - x : x2 - x]
    ys, xs = np.nonzero(alpha > 0.5)
    if len(xs) == 0:
        return None
    return [int(x1 + xs.min()), int(y1 + ys.min()), int(x1 + xs.max()) + 1, int(y1 + ys.max()) + 1]
