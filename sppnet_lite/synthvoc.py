"""The SynthVOC renderer: cluttered scenes of six shape classes, drawn from a seeded RNG.

Six shape classes (``disc``, ``square``, ``triangle``, ``star``, ``cross``, ``ring``) are
drawn with random colours, textures, stretches (aspect 1:2 to 2:1) and sizes (16 to
200 px) on cluttered backgrounds (patches of scikit-learn's two sample photographs,
gradients, noise) next to distractors that belong to no class (lines, scribbles,
jagged blobs). Shape, not colour, identifies a class. Objects may occlude each other
and be cut by the image border (``truncated``); tiny or heavily occluded ones are
marked ``difficult``, as in VOC. Everything drawn is decided by the ``rng`` passed in,
so :mod:`sppnet_lite.data` can make the dataset reproducible byte for byte.

Boxes are integer x1y1x2y2 pixel edges. Taught in chapter 04.
"""

from __future__ import annotations

import cv2
import numpy as np


def render_scene(rng: np.random.Generator, recipe: dict, width: int | None = None,
                 height: int | None = None) -> tuple[np.ndarray, list[dict]]:
    """Draw one cluttered scene: RGB uint8 image and its objects.

    Each object is a dict with ``box`` (x1y1x2y2 pixel edges, int), ``label``,
    ``truncated``, ``difficult`` and ``visible`` (fraction of its area not
    occluded and inside the image). Taught in chapter 04.
    """
    lo, hi = recipe["image_side"]
    width = int(rng.integers(lo, hi + 1)) if width is None else width
    height = int(rng.integers(lo, hi + 1)) if height is None else height
    image = _background(rng, recipe, width, height)
    n_distract = int(rng.integers(recipe["distractors_per_image"][0],
                                  recipe["distractors_per_image"][1] + 1))
    n_on_top = int(rng.integers(0, 3))
    for _ in range(n_distract):
        _draw_distractor(rng, image, thin_only=False)

    owner = np.full((height, width), -1, np.int16)  # which object is on top, per pixel
    placed: list[dict] = []
    n_objects = int(rng.integers(recipe["objects_per_image"][0],
                                 recipe["objects_per_image"][1] + 1))
    for _ in range(n_objects):
        for _attempt in range(20):
            obj = _sample_object(rng, recipe, width, height)
            if obj is None:
                continue
            covered = obj["mask"] >= 128
            ok = True
            for k, other in enumerate(placed):
                still = np.count_nonzero((owner == k) & ~covered)
                if still < recipe["min_visible_fraction"] * other["area"]:
                    ok = False
                    break
            if ok:
                owner[covered] = len(placed)
                _paint_object(rng, recipe, image, obj)
                placed.append(obj)
                break
    top = np.zeros((height, width), np.uint8)
    for _ in range(n_on_top):
        _draw_distractor(rng, image, thin_only=True, mask=top)
    sigma = rng.uniform(2.0, 7.0)
    image = _add_noise(rng, image, sigma)

    objects = []
    for k, obj in enumerate(placed):
        visible_px = np.count_nonzero((owner == k) & (top == 0))
        visible = visible_px / max(obj["area"], 1)
        x1, y1, x2, y2 = obj["box"]
        side = max(x2 - x1, y2 - y1)
        difficult = (side < recipe["difficult_if_side_below"]
                     or visible < recipe["difficult_if_visible_below"])
        objects.append({"box": obj["box"], "label": obj["label"], "truncated": obj["truncated"],
                        "difficult": bool(difficult), "visible": float(visible)})
    return image, objects



def render_single_object(rng: np.random.Generator, recipe: dict, width: int, height: int,
                         longer: float) -> tuple[np.ndarray, list, int]:
    """One ``width × height`` image holding exactly one object whose longer side is
    ``longer`` px: ``(image RGB uint8, box x1y1x2y2, label)``. Lighter clutter than the
    detection scenes: chapter 04 studies scale, aspect and framing, and must train in
    about a minute. Taught in chapter 04."""
    image = _background(rng, dict(recipe, photo_background_probability=0.3), width, height)
    for _ in range(int(rng.integers(0, 2))):
        _draw_distractor(rng, image, thin_only=True)
    label = int(rng.integers(len(recipe["classes"])))
    for _ in range(50):
        aspect = float(np.exp(rng.uniform(*np.log(recipe["aspect"]))))
        w, h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
        obj = _rasterise(rng, recipe, label, cx, cy, w, h, width, height)
        if obj is not None:
            break
    _paint_object(rng, recipe, image, obj)
    return _add_noise(rng, image, rng.uniform(2, 6)), obj["box"], label


_PHOTOS: list[np.ndarray] = []



# ----------------------------------------------------------------------------------------
# Helpers: drawing
# ----------------------------------------------------------------------------------------

def _photos() -> list[np.ndarray]:
    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(np.ascontiguousarray(img) for img in load_sample_images().images)
    return _PHOTOS


def _background(rng, recipe, width, height) -> np.ndarray:
    xx = np.arange(width, dtype=np.float32)[None, :] / width
    yy = np.arange(height, dtype=np.float32)[:, None] / height
    angle = rng.uniform(0, 2 * np.pi)
    t = np.float32(np.cos(angle)) * xx + np.float32(np.sin(angle)) * yy
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2 = rng.uniform(0, 255, 3).astype(np.float32), rng.uniform(0, 255, 3).astype(np.float32)
    gradient = c1 + t[..., None] * (c2 - c1)
    if rng.random() < recipe["photo_background_probability"]:
        photo = _photos()[int(rng.integers(len(_photos())))]
        ph, pw = photo.shape[:2]
        zoom = rng.uniform(0.4, 1.0)
        cw, ch = int(pw * zoom), int(ph * zoom)
        x0, y0 = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        patch = cv2.resize(photo[y0:y0 + ch, x0:x0 + cw], (width, height),
                           interpolation=cv2.INTER_AREA).astype(np.float32)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        mix = np.float32(rng.uniform(0.55, 0.9))
        image = mix * patch + (1 - mix) * gradient
    else:
        noise = np.zeros((height, width), np.float32)
        for cell in (4, 16, 48):  # multi-scale value noise
            coarse = rng.uniform(-1, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
            noise += cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * cell
        noise *= np.float32(rng.uniform(0.4, 1.2))
        image = gradient + noise[..., None] * rng.uniform(0.5, 1.0, 3).astype(np.float32)
        # Soft-edged patches of colour (sharp rectangles would look like the class "square"),
        # drawn and blurred at quarter resolution.
        small = (max(width // 4, 1), max(height // 4, 1))
        tint = np.zeros((small[1], small[0], 3), np.float32)
        weight = np.zeros((small[1], small[0]), np.float32)
        for _ in range(int(rng.integers(2, 8))):
            x, y = int(rng.integers(0, small[0])), int(rng.integers(0, small[1]))
            w, h = int(rng.integers(5, small[0] // 2)), int(rng.integers(5, small[1] // 2))
            tint[y:y + h, x:x + w] = 0.5 * rng.uniform(0, 255, 3)  # premultiplied by weight
            weight[y:y + h, x:x + w] = 0.5
        tint = cv2.resize(cv2.GaussianBlur(tint, (0, 0), 2.5), (width, height))
        weight = cv2.resize(cv2.GaussianBlur(weight, (0, 0), 2.5), (width, height))
        image = image * (1 - weight[..., None]) + tint
    return np.clip(image, 0, 255).astype(np.uint8)


def _random_colour(rng) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def _draw_distractor(rng, image, thin_only: bool, mask: np.ndarray | None = None) -> None:
    height, width = image.shape[:2]
    colour = _random_colour(rng)
    kind = int(rng.integers(0, 2 if thin_only else 3))
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    size = float(np.exp(rng.uniform(np.log(10), np.log(120))))
    targets = [image] if mask is None else [image, mask]
    if kind == 0:  # a straight line
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * size
        p1 = (int(cx - d[0]), int(cy - d[1]))
        p2 = (int(cx + d[0]), int(cy + d[1]))
        thickness = int(rng.integers(1, 4))
        for t, c in zip(targets, (colour, 255)):
            cv2.line(t, p1, p2, c, thickness, cv2.LINE_AA)
    elif kind == 1:  # a scribble
        pts = np.stack([cx + np.cumsum(rng.normal(0, size / 3, 5)),
                        cy + np.cumsum(rng.normal(0, size / 3, 5))], 1).astype(np.int32)
        thickness = int(rng.integers(1, 3))
        for t, c in zip(targets, (colour, 255)):
            cv2.polylines(t, [pts], False, c, thickness, cv2.LINE_AA)
    else:  # a jagged irregular blob (many vertices, strongly varying radius)
        k = int(rng.integers(9, 16))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = size / 2 * rng.uniform(0.25, 1.0, k)
        pts = np.stack([cx + radii * np.cos(angles),
                        cy + radii * rng.uniform(0.5, 1.5) * np.sin(angles)], 1)
        cv2.fillPoly(image, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def _shape_polygons(name: str, rng) -> list[tuple[np.ndarray, bool]]:
    """Unit-square ([-1, 1]^2) polygons; ``True`` fills, ``False`` cuts a hole."""
    if name in ("disc", "ring"):
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        circle = np.stack([np.cos(t), np.sin(t)], 1)
        if name == "disc":
            return [(circle, True)]
        return [(circle, True), (circle * rng.uniform(0.45, 0.65), False)]
    if name == "square":
        return [(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), True)]
    if name == "triangle":
        tri = np.array([[0, -1], [1, 1], [-1, 1]], float)
        return [(tri * [1, -1] if rng.random() < 0.3 else tri, True)]
    if name == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        t = -np.pi / 2 + k * np.pi / 5
        pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
        pts[:, 1] = (pts[:, 1] - (pts[:, 1].max() + pts[:, 1].min()) / 2) * 2 / np.ptp(pts[:, 1])
        return [(pts, True)]
    if name == "cross":
        a = rng.uniform(0.28, 0.4)
        return [(np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                           [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]], float), True)]
    raise ValueError(f"class name {name!r} has no shape; expected one of "
                     "disc, square, triangle, star, cross, ring")


def _sample_object(rng, recipe, width, height) -> dict | None:
    lo, hi = recipe["object_side"]
    longer = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    longer = min(longer, 0.9 * min(width, height))
    aspect = float(np.exp(rng.uniform(np.log(recipe["aspect"][0]), np.log(recipe["aspect"][1]))))
    w, h = (longer, longer / aspect) if aspect >= 1 else (longer * aspect, longer)
    label = int(rng.integers(len(recipe["classes"])))
    # Centre such that at most half of each side may leave the image (truncation).
    if rng.random() < 0.25:
        cx, cy = rng.uniform(-0.25 * w, width + 0.25 * w), rng.uniform(-0.25 * h, height + 0.25 * h)
    else:
        cx, cy = rng.uniform(w / 2, width - w / 2), rng.uniform(h / 2, height - h / 2)
    return _rasterise(rng, recipe, label, cx, cy, w, h, width, height)


def _rasterise(rng, recipe, label, cx, cy, w, h, width, height) -> dict | None:
    theta = np.deg2rad(rng.uniform(-1, 1) * recipe["max_rotation_deg"])
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    polys = _shape_polygons(recipe["classes"][label], rng)
    pts_all = [((p * [w / 2, h / 2]) @ rot.T + [cx, cy], fill) for p, fill in polys]
    outer = pts_all[0][0]
    fx1, fy1 = outer.min(0)
    fx2, fy2 = outer.max(0)
    full_area = max((fx2 - fx1) * (fy2 - fy1), 1e-6)
    x1, y1 = max(int(np.floor(fx1)), 0), max(int(np.floor(fy1)), 0)
    x2, y2 = min(int(np.ceil(fx2)), width), min(int(np.ceil(fy2)), height)
    if x2 - x1 < 4 or y2 - y1 < 4:
        return None
    if (x2 - x1) * (y2 - y1) < recipe["min_in_image_fraction"] * full_area:
        return None
    mask = np.zeros((height, width), np.uint8)
    for pts, fill in pts_all:
        cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255 if fill else 0,
                     cv2.LINE_AA, shift=4)
    ys, xs = np.nonzero(mask >= 128)
    if len(xs) < 12:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    truncated = fx1 < -0.5 or fy1 < -0.5 or fx2 > width + 0.5 or fy2 > height + 0.5
    full_px = np.count_nonzero(mask >= 128) / max(
        ((x2 - x1) * (y2 - y1)) / full_area, 1e-6) if truncated else len(xs)
    return {"mask": mask, "box": box, "label": label, "truncated": bool(truncated),
            "area": float(full_px)}


def _paint_object(rng, recipe, image, obj) -> None:
    x1, y1, x2, y2 = obj["box"]
    region = image[y1:y2, x1:x2]
    mask = obj["mask"]
    if recipe.get("object_style", "filled") == "outline":  # chapter 11's domain shift
        mask = _outline(mask, recipe["outline_px"])
    alpha = mask[y1:y2, x1:x2].astype(np.float32)[..., None] / 255.0
    bg = region.reshape(-1, 3).astype(np.float32).mean(0)
    lum_bg = float(bg @ [0.299, 0.587, 0.114])
    colour = np.array(_random_colour(rng), np.float32)
    for _ in range(12):  # shape must stand out from its local background
        if abs(float(colour @ [0.299, 0.587, 0.114]) - lum_bg) >= recipe["min_contrast"]:
            break
        colour = np.array(_random_colour(rng), np.float32)
    else:
        colour = np.full(3, 20.0 if lum_bg > 128 else 235.0, np.float32)
    h, w = y2 - y1, x2 - x1
    style = rng.random()
    fill = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
    if style < 0.25:  # stripes of a darker/lighter shade
        period = rng.uniform(4, 12)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 2 * np.pi / period) > 0)
        fill = fill * np.where(stripes, rng.uniform(0.6, 0.85), 1.0)[..., None]
    elif style < 0.5:  # a gradient within the shape
        t = np.linspace(0.7, 1.15, w, dtype=np.float32)[None, :, None]
        fill = fill * t
    fill = fill + rng.normal(0, 6, (h, w, 1)).astype(np.float32)
    out = region.astype(np.float32) * (1 - alpha) + np.clip(fill, 0, 255) * alpha
    region[...] = np.clip(out, 0, 255).astype(np.uint8)


def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    """The band of ``mask`` (uint8 ``(H, W)``) within ``width`` px of its edge, holes
    included: the shape drawn as a line. The image border is not an edge, so a truncated
    shape stays open there."""
    inner = cv2.erode(mask, np.ones((2 * width + 1, 2 * width + 1), np.uint8))
    return cv2.subtract(mask, inner)


def _add_noise(rng, image, sigma) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(image + noise, 0, 255).astype(np.uint8)
