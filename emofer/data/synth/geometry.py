"""SynthFER's face geometry: identity and expression parameters to the 68 landmarks, and head pose.

Everything here lives in a canonical face frame: ``u`` to the image right,
``v`` down, the face centred at the origin with the chin near ``v = 1`` and the
top of the head near ``v = -1``. The 68 landmarks follow the iBUG / 300-W
order (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, lips 48-67), and every
feature is *drawn through* them, so they are exact by construction.
:func:`project` then applies the head pose (yaw and pitch on a cylinder-like
depth model, roll, scale, translation) to all points at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# Expression deltas at intensity 1, per class (SynthFER order: BASIC7).
# brow_in/brow_out: vertical offset of inner/outer brow ends (negative = up);
# brow_pinch: inner brow ends move toward the midline; brow_arch: extra arch;
# lid_up: upper-lid opening factor change; lid_lo: lower-lid raise (squint);
# corner: lip-corner vertical offset (negative = up, a smile);
# width: mouth half-width change; open: lip gap; lip_raise: upper-lip raise;
# sneer: one-sided share of the lip raise; press: lip thinning; jaw: chin drop;
# teeth: show teeth when open;
# wrinkle_*: expression lines.
_EXPRESSIONS: dict[str, dict[str, float]] = {
    "neutral": {},
    "happiness": {"corner": -0.17, "width": 0.09, "open": 0.07, "teeth": 1.0, "lid_lo": 0.55,
                  "lid_up": -0.15, "brow_in": -0.02, "brow_out": -0.02, "wrinkle_smile": 1.0},
    "sadness": {"brow_in": -0.14, "brow_out": 0.07, "brow_pinch": 0.03, "corner": 0.15,
                "width": -0.04, "lid_up": -0.35, "press": 0.2, "wrinkle_sad": 1.0},
    "surprise": {"brow_in": -0.2, "brow_out": -0.18, "brow_arch": 0.05, "lid_up": 0.8,
                 "open": 0.30, "width": -0.13, "jaw": 0.12, "wrinkle_forehead": 1.0},
    "fear": {"brow_in": -0.17, "brow_out": -0.05, "brow_pinch": 0.05, "brow_arch": -0.03,
             "lid_up": 0.65, "lid_lo": 0.1, "open": 0.09, "width": 0.13, "corner": 0.05,
             "teeth": 1.0, "jaw": 0.04, "wrinkle_fear": 1.0},
    "disgust": {"brow_in": 0.05, "brow_out": 0.04, "brow_pinch": 0.02, "lid_up": -0.3,
                "lid_lo": 0.5, "lip_raise": 0.12, "sneer": 0.7, "corner": 0.07, "open": 0.03,
                "teeth": 1.0, "width": -0.03, "wrinkle_nose": 1.0},
    "anger": {"brow_in": 0.15, "brow_out": -0.05, "brow_pinch": 0.06, "lid_up": -0.3,
              "lid_lo": 0.35, "press": 0.65, "corner": 0.03, "width": -0.05, "wrinkle_glabella": 1.0},
}


@dataclass
class Identity:
    """Who the face belongs to: attributes and the shape and colour choices that follow from them.

    ``age`` (8 bins), ``gender`` (0 male, 1 female) and ``race`` (5 groups) use
    FaceXFormer's label indices (see :mod:`emofer.llm.agr`).
    """

    age: int
    gender: int
    race: int
    face_w: float
    jaw_n: float
    chin_y: float
    eye_y: float
    eye_sep: float
    eye_w: float
    eye_h: float
    brow_gap: float
    brow_thick: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    lip_up: float
    lip_lo: float
    iris_r: float
    gaze: tuple[float, float]
    eye_tilt: float
    rest_brow: float
    rest_corner: float
    colours: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    sneer_side: int = 1
    hair_style: int = 0
    hairline: float = -0.72
    beard: bool = False
    glasses: bool = False


@dataclass
class Expression:
    """One of the seven expressions at an intensity in ``[0, 1]`` (0 is a neutral face)."""

    name: str
    intensity: float

    def get(self, key: str) -> float:
        return _EXPRESSIONS[self.name].get(key, 0.0) * self.intensity


_SKIN = {  # per race group, FaceXFormer order: White, Black, Indian, Asian, Others
    0: [(241, 208, 184), (232, 190, 162), (246, 219, 199), (226, 183, 152)],
    1: [(96, 61, 42), (122, 80, 54), (78, 50, 34), (141, 96, 66)],
    2: [(178, 127, 92), (160, 111, 78), (193, 142, 102)],
    3: [(242, 212, 172), (228, 194, 150), (236, 203, 163)],
    4: [(203, 157, 116), (186, 141, 101), (212, 171, 130)],
}
_HAIR_DARK = [(28, 22, 20), (45, 32, 24), (60, 40, 28)]
_HAIR_VARIED = [(222, 190, 112), (112, 72, 40), (158, 72, 32), (40, 30, 26), (150, 110, 70)]
_IRIS = [(70, 45, 25), (95, 65, 35), (40, 30, 20), (60, 110, 160), (80, 120, 80)]


class Draws:
    """Hands out numbers from one block of uniform draws (one generator call per sample is much faster)."""

    def __init__(self, rng: np.random.Generator, n: int) -> None:
        self._u = rng.random(n).tolist()
        self._i = 0

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        self._i += 1
        return lo + (hi - lo) * self._u[self._i - 1]

    def sym(self) -> float:
        """A draw in ``[-1, 1]``."""
        return self.uniform(-1.0, 1.0)

    def index(self, n: int) -> int:
        return min(n - 1, int(self.uniform() * n))

    def pick(self, items: list):
        return items[self.index(len(items))]

    def jitter(self, colour: tuple[int, int, int], amount: int) -> tuple[int, int, int]:
        return tuple(min(255, max(0, int(c + amount * self.sym()))) for c in colour)  # type: ignore[return-value]


def sample_identity(rng: np.random.Generator, difficulty: float = 0.5) -> Identity:
    """Draws a random identity: attributes, face shape, colours and resting-face quirks."""
    r = Draws(rng, 48)
    age, gender, race = r.index(8), r.index(2), r.index(5)
    child = age == 0
    u = [r.sym() for _ in range(16)]
    skin = r.jitter(r.pick(_SKIN[race]), 8)
    grey = r.uniform() < 0.5
    if age >= 6:
        hair = r.jitter((226, 226, 226) if age == 7 else (165, 165, 168), 10)
    elif age == 5 and grey:
        hair = r.jitter((130, 128, 126), 12)
    elif race == 0:
        hair = r.jitter(r.pick(_HAIR_VARIED), 12)
    else:
        hair = r.jitter(r.pick(_HAIR_DARK), 8)
    iris = r.pick(_IRIS) if race == 0 else r.pick(_IRIS[:3])
    dark = 0.55 if race == 1 else 0.7
    lips = tuple(min(255, int(c * f + b)) for c, f, b in zip(skin, (dark, dark * 0.62, dark * 0.66), (40, 8, 10), strict=True))
    colours = {
        "skin": skin,
        "shade": tuple(int(c * 0.72) for c in skin),
        "crease": tuple(int(c * 0.55) for c in skin),
        "hair": hair,
        "iris": r.jitter(iris, 10),
        "lips": lips,
        "brow": tuple(min(int(h * 0.8), int(c * 0.45)) for h, c in zip(hair, skin, strict=True)),
        "shirt": (int(r.uniform(20, 236)), int(r.uniform(20, 236)), int(r.uniform(20, 236))),
        "glasses": r.pick([(20, 20, 20), (120, 80, 40), (180, 180, 190)]),
        "nostril": tuple(int(c * 0.5) for c in skin),
        "beard": tuple(int(0.55 * a + 0.45 * b) for a, b in zip(skin, hair, strict=True)),
    }
    quirk = 0.02 + 0.04 * difficulty
    return Identity(
        age=age,
        gender=gender,
        race=race,
        face_w=0.78 + 0.04 * u[0] + (0.05 if child else 0.0),
        jaw_n=(2.7 + 0.3 * u[1]) if gender == 0 else (1.75 + 0.2 * u[1]),
        chin_y=(0.98 + 0.04 * u[2]) - (0.08 if child else 0.0),
        eye_y=-0.1 + 0.03 * u[3] + (0.08 if child else 0.0),
        eye_sep=0.32 + 0.02 * u[4],
        eye_w=(0.29 + 0.02 * u[5]) * (1.15 if child else 1.0),
        eye_h=(0.125 + 0.01 * u[6]) * (0.8 if race == 3 else 1.0) * (1.12 if child else 1.0),
        brow_gap=0.2 + 0.02 * u[7],
        brow_thick=(0.07 if gender == 0 else 0.05) + 0.01 * u[8],
        nose_y=0.24 + 0.03 * u[9] + (0.03 if child else 0.0),
        nose_w=(0.15 + 0.02 * u[10]) * (1.25 if race == 1 else 1.0) * (0.85 if child else 1.0),
        mouth_y=0.53 + 0.03 * u[11] + (0.02 if child else 0.0),
        mouth_w=(0.27 + 0.02 * u[12]) * (0.85 if child else 1.0),
        lip_up=(0.045 if gender == 0 else 0.055) * (1.3 if race == 1 else 1.0),
        lip_lo=(0.06 if gender == 0 else 0.07) * (1.3 if race == 1 else 1.0),
        iris_r=0.085 + 0.008 * u[13],
        gaze=(0.025 * r.sym(), 0.01 * r.sym()),
        eye_tilt=0.03 if race == 3 else 0.0,
        rest_brow=quirk * u[14],
        rest_corner=quirk * u[15],
        colours=colours,
        sneer_side=1 if r.uniform() < 0.5 else -1,
        hair_style=r.index(3),
        hairline=-0.72 + 0.05 * r.sym() - (0.1 if age == 7 and gender == 0 else 0.0),
        beard=gender == 0 and age >= 2 and r.uniform() < 0.2,
        glasses=age >= 1 and r.uniform() < 0.08,
    )


Point = tuple[float, float]

_JAW_ANGLES = [math.pi + math.pi * k / 16 for k in range(17)]
_JAW_CS = [(math.cos(a), abs(math.sin(a))) for a in _JAW_ANGLES]
_BROW_T = (0.0, 0.25, 0.5, 0.75, 1.0)  # outer -> inner
_BROW_ARCH = [math.sin(math.pi * (0.15 + 0.7 * t)) for t in _BROW_T]
_LIP_OUTER_UP = (-1.0, -0.62, -0.25, 0.0, 0.25, 0.62, 1.0)  # 48..54
_LIP_OUTER_UP_SHAPE = (0.0, 0.8, 1.0, 0.82, 1.0, 0.8, 0.0)
_LIP_OUTER_UP_LIFT = (0.0, 1.0, 0.8, 0.7, 0.8, 1.0, 0.0)
_LIP_OUTER_LO = (0.62, 0.25, 0.0, -0.25, -0.62)  # 55..59
_LIP_OUTER_LO_SHAPE = (0.75, 1.0, 1.05, 1.0, 0.75)
_LIP_INNER_UP = (-0.9, -0.4, 0.0, 0.4, 0.9)  # 60..64
_LIP_INNER_UP_LIFT = (0.0, 1.0, 0.7, 1.0, 0.0)
_LIP_INNER_LO = (0.4, 0.0, -0.4)  # 65..67


def _env(f: float) -> float:
    return math.sqrt(max(0.0, 1.0 - f * f))


def _jaw(ident: Identity, jaw_drop: float) -> list[Point]:
    """Landmarks 0-16: a superellipse from ear level round the chin (squarer for men)."""
    top = ident.eye_y + 0.04
    b = ident.chin_y + jaw_drop - top
    e = 2.0 / ident.jaw_n
    w = ident.face_w
    return [(math.copysign(w * abs(c) ** e, c), top + b * s**e) for c, s in _JAW_CS]


def _brows(ident: Identity, ex: Expression) -> list[Point]:
    """Landmarks 17-26: each brow five points, outer to inner on the image-left, mirrored."""
    outer_x = ident.eye_sep + ident.eye_w * 0.62
    inner_x = ident.eye_sep - ident.eye_w * 0.55 - ex.get("brow_pinch")
    base = ident.eye_y - ident.brow_gap + ident.rest_brow
    arch = 0.05 + ex.get("brow_arch")
    b_out, b_in = ex.get("brow_out"), ex.get("brow_in")
    left = [
        (-(outer_x + (inner_x - outer_x) * t), base - arch * a + b_out * (1 - t) + b_in * t)
        for t, a in zip(_BROW_T, _BROW_ARCH, strict=True)
    ]
    return left + [(-x, y) for x, y in reversed(left)]


def _nose(ident: Identity) -> list[Point]:
    """Landmarks 27-35: bridge top to tip, then the base from left to right nostril."""
    top, tip, w = ident.eye_y, ident.nose_y, ident.nose_w
    bridge = [(0.0, top + (tip - top) * k / 3) for k in range(4)]
    base = [(-w, tip + 0.02), (-w / 2, tip + 0.05), (0.0, tip + 0.06), (w / 2, tip + 0.05), (w, tip + 0.02)]
    return bridge + base


def _eyes(ident: Identity, ex: Expression) -> list[Point]:
    """Landmarks 36-47: outer corner, two upper-lid, inner corner, two lower-lid points per eye."""
    w, cy, sep = ident.eye_w / 2, ident.eye_y, ident.eye_sep
    up = ident.eye_h * max(0.25, 1.0 + ex.get("lid_up"))
    lo = ident.eye_h * 0.75 * max(0.2, 1.0 - ex.get("lid_lo"))
    tilt = ident.eye_tilt
    rel = [(-w, -tilt), (-w / 3, -up), (w / 3, -up), (w, 0.0), (w / 3, lo), (-w / 3, lo)]
    left = [(x - sep, cy + y) for x, y in rel]
    # iBUG starts the image-right eye at its inner corner: the mirror of 39, 38, 37, 36, 41, 40
    right = [(sep - x, cy + y) for x, y in (rel[i] for i in (3, 2, 1, 0, 5, 4))]
    return left + right


def _mouth(ident: Identity, ex: Expression) -> list[Point]:
    """Landmarks 48-67: outer lip (48-59) and inner lip (60-67) round a curved lip line."""
    w = ident.mouth_w + ex.get("width")
    corner = ex.get("corner") + ident.rest_corner
    gap, lift = ex.get("open"), ex.get("lip_raise")
    sneer = ex.get("sneer") / max(ex.intensity, 1e-6) * ident.sneer_side  # a side, not a strength
    thin = 1.0 - 0.7 * min(1.0, ex.get("press"))
    ul, ll, y0 = ident.lip_up * thin, ident.lip_lo * thin, ident.mouth_y
    g_up, g_lo = 0.35 * gap, 0.65 * gap

    def mid(f: float) -> float:  # the lip line: corners pulled up (smile) or down (frown)
        return y0 + corner * f * f

    pts = [
        (f * w, mid(f) - g_up * _env(f) - lift * li * (1 + sneer * f) - ul * sh)
        for f, sh, li in zip(_LIP_OUTER_UP, _LIP_OUTER_UP_SHAPE, _LIP_OUTER_UP_LIFT, strict=True)
    ]
    pts += [
        (f * w, mid(f) + g_lo * _env(f) + ll * sh) for f, sh in zip(_LIP_OUTER_LO, _LIP_OUTER_LO_SHAPE, strict=True)
    ]
    inner = [
        (f * w, mid(f) - g_up * _env(f) - lift * li * (1 + sneer * f))
        for f, li in zip(_LIP_INNER_UP, _LIP_INNER_UP_LIFT, strict=True)
    ]
    inner[0] = (inner[0][0], mid(-0.9))
    inner[4] = (inner[4][0], mid(0.9))
    pts += inner
    pts += [(f * w, mid(f) + g_lo * _env(f)) for f in _LIP_INNER_LO]
    return pts


def landmark_list(ident: Identity, ex: Expression) -> list[Point]:
    """The 68 canonical-frame landmarks of a face with this identity and expression."""
    return _jaw(ident, ex.get("jaw")) + _brows(ident, ex) + _nose(ident) + _eyes(ident, ex) + _mouth(ident, ex)


def landmarks(ident: Identity, ex: Expression) -> np.ndarray:
    """The 68 canonical-frame landmarks as an array ``[68, 2]``."""
    return np.asarray(landmark_list(ident, ex), dtype=np.float64)


NOSE_DEPTH = (0.08, 0.14, 0.22, 0.32, 0.12, 0.16, 0.2, 0.16, 0.12)
"""How far landmarks 27-35 stand in front of the face surface (yaw parallax)."""


def surface_depth(x: np.ndarray, face_w: float) -> np.ndarray:
    """Depth of face-surface points at horizontal positions ``x``: a half-cylinder."""
    t = x / (face_w * 1.05)
    return 0.8 * np.sqrt(np.maximum(1.0 - t * t, 0.0))


@dataclass(frozen=True)
class Pose:
    """Head pose and placement: angles in radians, ``scale`` in pixels per face unit, centre in pixels."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    scale: float = 1.0
    cx: float = 0.0
    cy: float = 0.0

    def lerp(self, other: Pose, t: float) -> Pose:
        return Pose(*(a + (b - a) * t for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[float, ...]:
        return (self.yaw, self.pitch, self.roll, self.scale, self.cx, self.cy)


def project(points: np.ndarray, depth: np.ndarray, pose: Pose) -> np.ndarray:
    """Canonical points ``[N,2]`` with depths ``[N]`` to pixel coordinates under ``pose``."""
    sy, cy_ = math.sin(pose.yaw), math.cos(pose.yaw)
    sp, cp = math.sin(pose.pitch), math.cos(pose.pitch)
    sr, cr = math.sin(pose.roll), math.cos(pose.roll)
    # [u, v] = [x*cos(yaw) + z*sin(yaw), y*cos(pitch) + z*sin(pitch)], then roll, scale, shift
    uv = points * (cy_, cp) + depth[:, None] * (sy, sp)
    rot = np.array([[cr, sr], [-sr, cr]]) * pose.scale
    return uv @ rot + (pose.cx, pose.cy)

