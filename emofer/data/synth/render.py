"""SynthFER's renderer: draws a face from geometry with PIL at twice the output size, then downsamples.

Drawing at 2x and reducing by 2 gives cheap anti-aliasing; lighting and sensor
noise are applied at the output size in numpy. A :class:`Scene` (background,
clutter, lighting, occluder) is sampled once per image or video, so a video's
frames share it and only the face is redrawn per frame.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain

import numpy as np
from PIL import Image, ImageDraw

from emofer.data.synth.geometry import (
    NOSE_DEPTH,
    Draws,
    Expression,
    Identity,
    Point,
    Pose,
    landmark_list,
    project,
    surface_depth,
)

_SCLERA = (238, 236, 230)
_CAVITY = (70, 22, 28)
_TEETH = (246, 244, 236)
_LID = (38, 28, 28)
_NOISE_BANK = 32


@dataclass
class Scene:
    """Everything around the face that stays fixed across a video's frames."""

    background: tuple[int, int, int]
    clutter: list[tuple[int, tuple[float, ...], tuple[int, int, int], bool]]
    gain: float
    gradient: float
    light_angle: float
    noise: float
    occluder: tuple[int, int, float, float, tuple[int, int, int]] | None  # kind, region, radius, shift, colour
    _bg_cache: dict[int, Image.Image] = field(default_factory=dict, repr=False)

    def backdrop(self, size: int) -> Image.Image:
        """The background and the clutter behind the face at draw resolution (cached)."""
        if size not in self._bg_cache:
            img = Image.new("RGB", (size, size), self.background)
            draw = ImageDraw.Draw(img)
            for kind, geom, colour, front in self.clutter:
                if not front:
                    _draw_clutter(draw, kind, geom, colour, size)
            self._bg_cache[size] = img
        return self._bg_cache[size].copy()


def _random_colour(r: Draws, s_min: float = 0.35, v_min: float = 0.3) -> tuple[int, int, int]:
    red, green, blue = colorsys.hsv_to_rgb(r.uniform(), r.uniform(s_min, 1.0), r.uniform(v_min, 1.0))
    return (int(red * 255), int(green * 255), int(blue * 255))


def sample_scene(rng: np.random.Generator, difficulty: float = 0.5) -> Scene:
    """Draws the nuisances: background colour, clutter, lighting, noise and (rarely) an occluder."""
    r = Draws(rng, 160)
    clutter = []
    for _ in range(1 + r.index(2 + int(8 * difficulty))):
        kind = r.index(4)
        geom = tuple(r.uniform() for _ in range(6))
        clutter.append((kind, geom, _random_colour(r, 0.2, 0.2), r.uniform() < 0.3))
    occluded = r.uniform() < 0.2 * difficulty
    occluder = (r.index(2), r.index(4), r.uniform(0.26, 0.36), r.uniform(), _random_colour(r)) if occluded else None
    return Scene(
        background=_random_colour(r),
        clutter=clutter,
        gain=r.uniform(1.0 - 0.35 * difficulty, 1.0 + 0.15 * difficulty),
        gradient=r.uniform(0.0, 0.6 * difficulty),
        light_angle=r.uniform(0, 2 * math.pi),
        noise=r.uniform(1.0, 2.0 + 14.0 * difficulty),
        occluder=occluder,
    )


def _draw_clutter(draw: ImageDraw.ImageDraw, kind: int, g: tuple[float, ...], colour, size: int) -> None:
    x, y = g[0] * size, g[1] * size
    w, h = (0.06 + 0.3 * g[2]) * size, (0.06 + 0.3 * g[3]) * size
    if kind == 0:
        draw.rectangle([x, y, x + w, y + h], fill=colour)
    elif kind == 1:
        draw.ellipse([x, y, x + w, y + h], fill=colour)
    elif kind == 2:
        angle = g[4] * math.pi
        dx, dy = math.cos(angle) * w * 1.5, math.sin(angle) * w * 1.5
        draw.line([x - dx, y - dy, x + dx, y + dy], fill=colour, width=max(1, int(size * 0.012 * (1 + 2 * g[5]))))
    else:
        draw.polygon([x, y, x + w, y + 0.3 * h, x + 0.4 * w, y + h], fill=colour)


@lru_cache(maxsize=64)
def _unit(a0: float, a1: float, n: int, endpoint: bool) -> tuple[tuple[float, float], ...]:
    step = (a1 - a0) / (n - 1 if endpoint else n)
    return tuple((math.cos(a0 + i * step), math.sin(a0 + i * step)) for i in range(n))


def _circle(cx: float, cy: float, r: float, n: int = 10, aspect: float = 1.0) -> list[Point]:
    """A circle (or an ellipse ``aspect`` times as wide as tall) as an ``n``-gon."""
    rx = r * aspect
    return [(cx + rx * c, cy + r * s) for c, s in _unit(0.0, 2 * math.pi, n, False)]


def _arc(cx: float, base: float, rx: float, ry: float, n: int) -> list[Point]:
    """The upper half of an ellipse, from its right end over the top to its left end."""
    return [(cx + rx * c, base - ry * s) for c, s in _unit(0.0, math.pi, n, True)]


def _add(p: Point, dx: float, dy: float) -> Point:
    return (p[0] + dx, p[1] + dy)


class _Canvas:
    """Collects canonical shapes as flat lists, projects them in one call, and hands PIL flat coordinates.

    A point's depth is ``extra`` plus, for points on the face surface, the
    half-cylinder depth of :func:`surface_depth` (yaw and pitch parallax).
    """

    def __init__(self) -> None:
        self._pts: list[Point] = []
        self._extra: list[float] = []
        self._surface: list[float] = []
        self._spans: dict[str, tuple[int, int]] = {}

    def add(self, name: str, pts: list[Point], extra: float | list[float] = 0.0, surface: bool = True) -> None:
        n0, n = len(self._pts), len(pts)
        self._pts += pts
        self._extra += extra if isinstance(extra, list) else [extra] * n
        self._surface += [1.0 if surface else 0.0] * n
        self._spans[name] = (n0, n0 + n)

    def project(self, pose: Pose, face_w: float) -> dict[str, np.ndarray]:
        n = len(self._pts)
        pts = np.fromiter(chain.from_iterable(self._pts), dtype=np.float64, count=2 * n).reshape(n, 2)
        depth = np.array(self._extra) + np.array(self._surface) * surface_depth(pts[:, 0], face_w)
        xy = project(pts, depth, pose)
        return {name: xy[a:b] for name, (a, b) in self._spans.items()}


def _flat(a: np.ndarray) -> list[float]:
    return a.ravel().tolist()


def _expression_lines(ident: Identity, ex: Expression, lm: list[Point]) -> list[list[Point]]:
    """Creases made by the expression: polylines in the canonical frame."""
    lines: list[list[Point]] = []
    brow_in_y = min(lm[21][1], lm[22][1])
    brow_top = min(p[1] for p in lm[17:27])
    if ex.get("wrinkle_smile") > 0.3:
        for s, wing, corner in ((-1, lm[31], lm[48]), (1, lm[35], lm[54])):
            a, c = _add(wing, s * 0.05, -0.02), _add(corner, s * 0.06, 0.02)
            lines.append([a, ((a[0] + c[0]) / 2 + s * 0.06, (a[1] + c[1]) / 2), c])
    if ex.get("wrinkle_forehead") > 0.3:
        lines += _forehead(brow_top, 3)
    if ex.get("wrinkle_fear") > 0.3:
        for k in range(2):
            y = brow_in_y - 0.08 - 0.07 * k
            lines.append([(-0.14, y + 0.02), (0.0, y), (0.14, y + 0.02)])
    if ex.get("wrinkle_sad") > 0.3:
        for s, x0 in ((-1, lm[21][0]), (1, lm[22][0])):
            y = brow_in_y
            lines.append([(x0 - s * 0.02, y - 0.06), (x0 + s * 0.06, y - 0.12), (x0 + s * 0.14, y - 0.1)])
    if ex.get("wrinkle_glabella") > 0.3:
        for s in (-1, 1):
            lines.append([(s * 0.045, brow_in_y + 0.02), (s * 0.06, brow_in_y - 0.12)])
    if ex.get("wrinkle_nose") > 0.3:
        y0 = lm[28][1]
        for k in range(3):
            y = y0 - 0.02 + 0.055 * k
            lines.append([(-0.09, y + 0.02), (0.0, y - 0.01), (0.09, y + 0.02)])
        for s, wing in ((-1, lm[31]), (1, lm[35])):
            a = _add(wing, s * 0.03, -0.03)
            lines.append([a, _add(a, s * 0.08, 0.1), _add(a, s * 0.1, 0.2)])
    return lines


def _forehead(brow_top: float, n: int) -> list[list[Point]]:
    return [
        [((0.32 - 0.04 * k) * c, brow_top - 0.06 - 0.08 * k - 0.03 * s) for c, s in _unit(0.25 * math.pi, 0.75 * math.pi, 4, True)]
        for k in range(n)
    ]


def _age_lines(ident: Identity, lm: list[Point]) -> list[list[Point]]:
    """Wrinkles of age: forehead lines from 40, crow's feet and nasolabial folds from 50."""
    lines: list[list[Point]] = []
    if ident.age >= 4:
        lines += _forehead(min(p[1] for p in lm[17:27]), 1 + (ident.age >= 6))
    if ident.age >= 5:
        for s, o, wing, corner in ((-1, lm[36], lm[31], lm[48]), (1, lm[45], lm[35], lm[54])):
            for dy in (-0.045, 0.045):
                lines.append([_add(o, s * 0.03, 0.0), _add(o, s * 0.1, dy)])
            a, c = _add(wing, s * 0.05, -0.02), _add(corner, s * 0.07, 0.04)
            lines.append([a, ((a[0] + c[0]) / 2 + s * 0.05, (a[1] + c[1]) / 2), c])
    return lines


def _hair(ident: Identity, head_top: float) -> tuple[list[Point] | None, list[Point]]:
    """Back hair (long styles; None for short) and the front hair cap down to its hairline."""
    w = ident.face_w
    back = None
    if ident.gender == 1:
        length = (1.25, 0.75, 1.05)[ident.hair_style]
        outer = _arc(0.0, ident.eye_y, w + 0.16, ident.eye_y - head_top + 0.16, 11)
        back = [(w + 0.2, length)] + outer + [(-w - 0.2, length)]
    cap = _arc(0.0, ident.eye_y, w + 0.07, ident.eye_y - head_top + 0.08, 11)
    side = ident.eye_y + (0.05 if ident.gender == 1 else -0.04)
    hairline = []
    for i in range(9):
        f = -1.0 + i / 4
        if ident.gender == 1 and ident.hair_style != 1:  # side-swept fringe
            y = ident.hairline + 0.1 * f * (1 if ident.hair_style == 0 else -1) + 0.1 * f * f
        else:
            y = ident.hairline + 0.22 * f**4
        hairline.append((f * (w + 0.07), min(y, side)))
    return back, cap + hairline


def _occluder(scene: Scene) -> list[Point]:
    kind, region, radius, jitter, _ = scene.occluder  # type: ignore[misc]
    ox = (-0.38, 0.38, -0.5, 0.5)[region] + 0.1 * (jitter - 0.5)
    oy = (-0.3, -0.3, 0.62, 0.62)[region]
    if kind:
        return _circle(ox, oy, radius, 12)
    h = radius * 0.8
    return [(ox - radius, oy - h), (ox + radius, oy - h), (ox + radius, oy + h), (ox - radius, oy + h)]


def _shapes(ident: Identity, ex: Expression, scene: Scene) -> tuple[_Canvas, int, int]:
    """Every shape of the face in the canonical frame, with the numbers of age and expression lines."""
    lm = landmark_list(ident, ex)
    head_top = -1.0 - (0.05 if ident.age == 0 else 0.0)
    cv = _Canvas()
    cv.add("lm", lm, [0.0] * 27 + list(NOSE_DEPTH) + [0.0] * 32)
    back, front = _hair(ident, head_top)
    if back is not None:
        cv.add("hair_back", back, -0.3, surface=False)
    cv.add("neck", [(-0.28, 0.5), (0.28, 0.5), (0.32, 1.5), (-0.32, 1.5)], surface=False)
    cv.add("shirt", [(-1.4, 1.22), (-0.3, 1.12), (0.0, 1.3), (0.3, 1.12), (1.4, 1.22), (1.8, 3.0), (-1.8, 3.0)],
           -0.1, surface=False)
    top_y = ident.eye_y + 0.04
    cv.add("head", _arc(0.0, top_y, ident.face_w, top_y - head_top, 13))
    ear_x, ear_y = ident.face_w + 0.02, ident.eye_y + 0.14
    cv.add("ear-1", _circle(-ear_x, ear_y, 0.1, 8, 0.75), surface=False)
    cv.add("ear1", _circle(ear_x, ear_y, 0.1, 8, 0.75), surface=False)
    cv.add("hair_front", front, 0.05)
    lid = 0.25
    for s, i in ((-1, 36), (1, 42)):
        eye = lm[i : i + 6]
        cx = (eye[0][0] + eye[3][0]) / 2 + ident.gaze[0]
        cy = ident.eye_y + ident.gaze[1]
        cv.add(f"iris{s}", _circle(cx, cy, ident.iris_r, 10))
        cv.add(f"pupil{s}", _circle(cx, cy, ident.iris_r * 0.42, 6))
        up, lo = eye[:4], [eye[0], eye[5], eye[4], eye[3]]
        cv.add(f"lidmask_up{s}", up + [_add(p, 0.0, -lid) for p in reversed(up)])
        cv.add(f"lidmask_lo{s}", lo + [_add(p, 0.0, lid * 0.6) for p in reversed(lo)])
        if ident.glasses:
            cv.add(f"glass{s}", _circle(cx - ident.gaze[0], ident.eye_y, ident.eye_w * 0.72, 12), 0.05)
    expr = _expression_lines(ident, ex, lm)
    lines = _age_lines(ident, lm) + expr
    for k, line in enumerate(lines):
        cv.add(f"line{k}", line, 0.02)
    if ident.beard:
        chin = lm[2:15]
        cv.add("beard", chin + [(lm[54][0] + 0.1, lm[33][1] + 0.06), (lm[48][0] - 0.1, lm[33][1] + 0.06)])
    if scene.occluder is not None:
        cv.add("occluder", _occluder(scene), 0.3)
    return cv, len(lines) - len(expr), len(expr)


@lru_cache(maxsize=8)
def _post_fields(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Coordinate ramps for lighting and a fixed bank of unit noise fields for one output size."""
    ramp = (np.arange(size, dtype=np.float32) - size / 2) / size
    noise = np.random.default_rng(12345).standard_normal((_NOISE_BANK, size, size, 3)).astype(np.float32)
    return ramp[None, :], ramp[:, None], noise


def render(
    ident: Identity,
    ex: Expression,
    pose: Pose,
    scene: Scene,
    size: int = 64,
    noise_index: int = 0,
) -> tuple[Image.Image, np.ndarray]:
    """Draws one face.

    Args:
        ident: who (shape, colours, attributes).
        ex: which expression, how strong.
        pose: head pose in *output* pixels (the canvas is drawn at twice that).
        scene: background, clutter, lighting, noise, occluder.
        size: output side in pixels.
        noise_index: which noise field of the fixed bank to use.

    Returns:
        The RGB image and its 68 landmarks ``[68,2]`` in output pixel coordinates
        (pixel ``i``'s centre at ``i``).
    """
    d = 2 * size
    # output pixel i covers canvas pixels 2i and 2i+1, so x_canvas = 2 x_out + 0.5
    pose2 = Pose(pose.yaw, pose.pitch, pose.roll, pose.scale * 2, pose.cx * 2 + 0.5, pose.cy * 2 + 0.5)
    cv, n_age, n_expr = _shapes(ident, ex, scene)
    p = cv.project(pose2, ident.face_w)
    k = pose2.scale
    col = ident.colours
    thin = max(1, round(0.028 * k))

    img = scene.backdrop(d)
    draw = ImageDraw.Draw(img)
    if "hair_back" in p:
        draw.polygon(_flat(p["hair_back"]), fill=col["hair"])
    draw.polygon(_flat(p["shirt"]), fill=col["shirt"])
    draw.polygon(_flat(p["neck"]), fill=col["shade"])
    draw.polygon(_flat(p["ear-1"]), fill=col["skin"])
    draw.polygon(_flat(p["ear1"]), fill=col["skin"])
    pl = p["lm"]
    draw.polygon(_flat(pl[:17]) + _flat(p["head"]), fill=col["skin"])
    if ident.beard:
        draw.polygon(_flat(p["beard"]), fill=col["beard"])
    for i in range(n_age + n_expr):
        draw.line(_flat(p[f"line{i}"]), fill=col["shade" if i < n_age else "crease"], width=thin, joint="curve")
    # eyes: sclera, iris, pupil, then skin masks above/below the lids, then the lid lines
    lid_w = max(1, round(0.04 * k))
    for s, i in ((-1, 36), (1, 42)):
        eye = pl[i : i + 6]
        draw.polygon(_flat(eye), fill=_SCLERA)
        draw.polygon(_flat(p[f"iris{s}"]), fill=col["iris"])
        draw.polygon(_flat(p[f"pupil{s}"]), fill=(12, 10, 10))
        draw.polygon(_flat(p[f"lidmask_up{s}"]), fill=col["skin"])
        draw.polygon(_flat(p[f"lidmask_lo{s}"]), fill=col["skin"])
        draw.line(_flat(eye[:4]), fill=_LID, width=lid_w, joint="curve")
        draw.line(_flat(eye[[3, 4, 5, 0]]), fill=col["shade"], width=thin)
    brow_w = max(1, round(ident.brow_thick * k * 1.25))
    draw.line(_flat(pl[17:22]), fill=col["brow"], width=brow_w, joint="curve")
    draw.line(_flat(pl[22:27]), fill=col["brow"], width=brow_w, joint="curve")
    # nose: one side of the bridge, the base and nostrils
    draw.line(_flat(pl[28] + (pl[31] - pl[28]) * 0.15) + _flat(pl[31]), fill=col["shade"], width=thin)
    draw.line(_flat(pl[31:36]), fill=col["shade"], width=thin, joint="curve")
    r = 0.022 * k
    for j in (32, 34):
        x, y = pl[j].tolist()
        draw.ellipse([x - r, y - r * 0.8, x + r, y + r * 0.8], fill=col["nostril"])
    # mouth: lips, then the cavity and teeth when open, or the lip seam when closed
    draw.polygon(_flat(pl[48:60]), fill=col["lips"])
    inner = pl[60:68]
    gap = float(np.hypot(*(pl[66] - pl[62]))) / k
    if gap > 0.02:
        draw.polygon(_flat(inner), fill=_CAVITY)
        if ex.get("teeth") > 0:
            upper = inner[:5]
            drop = min(0.06, gap * 0.55) * k
            draw.polygon(_flat(upper) + _flat(upper[[3, 2, 1]] + (0.0, drop)), fill=_TEETH)
    draw.line(_flat(inner[:5]), fill=_CAVITY, width=thin, joint="curve")
    if ident.glasses:
        draw.polygon(_flat(p["glass-1"]), outline=col["glasses"], width=thin)
        draw.polygon(_flat(p["glass1"]), outline=col["glasses"], width=thin)
        draw.line(_flat(p["glass-1"][0]) + _flat(p["glass1"][6]), fill=col["glasses"], width=thin)
    draw.polygon(_flat(p["hair_front"]), fill=col["hair"])
    for kind, geom, colour, front in scene.clutter:
        if front and (abs(geom[0] - 0.5) > 0.3 or geom[1] > 0.8):
            _draw_clutter(draw, kind, geom, colour, d)
    if scene.occluder is not None:
        draw.polygon(_flat(p["occluder"]), fill=scene.occluder[4])
    out = _finish(img.reduce(2), scene, noise_index)
    return out, ((pl - 0.5) / 2.0).astype(np.float32)


def _finish(img: Image.Image, scene: Scene, noise_index: int) -> Image.Image:
    """Lighting gain and gradient, then sensor noise from the fixed bank."""
    size = img.size[0]
    rx, ry, bank = _post_fields(size)
    a = np.asarray(img, dtype=np.float32)
    angle = scene.light_angle
    light = scene.gain * (1.0 + scene.gradient * (math.cos(angle) * rx + math.sin(angle) * ry))
    noise = bank[noise_index % _NOISE_BANK]
    flat = a.reshape(size, size * 3)  # one contiguous row per image row: cheaper than broadcasting
    flat *= np.repeat(light, 3, axis=1)
    flat += (noise * scene.noise).reshape(size, size * 3)
    np.clip(flat, 0.0, 255.0, out=flat)
    return Image.fromarray(a.astype(np.uint8), "RGB")
