"""The robustness suite: corrupted copies of 28x28 digits, made on the fly and the same every time.

MNIST-C's fifteen corruptions (Mu & Gilmer, 2019), re-implemented from the parameters of its
published code (google-research/mnist-c, corruptions.py) at the severity its dataset used,
and the shifts people's own handwriting brings: low resolution (the whole frame shrunk, and
scans of a digit that fills its box at 8, 10 and 12 pixels across, uploaded at users' sizes),
thick and thin strokes, inverted polarity, a photo of paper, JPEG. Every function maps a uint8
(28, 28) digit, light ink on black, and a numpy Generator to a uint8 image (or a PIL image, as
users upload); image i of a batch draws from a generator seeded with (seed, i), so the first
N test images get the same corruptions whatever N is.

These are test-time transforms only: the training augmentations (mnistlit.core.augment) are
separate code with other ranges, so a recipe is never trained on the suite itself.
"""

import io
import math

import numpy as np
from PIL import Image, ImageFilter
from skimage import feature, filters, transform


def _unit(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) / 255


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _warp_about_centre(x: np.ndarray, **affine) -> np.ndarray:
    """skimage's warp with an affine map that keeps the centre (13.5, 13.5) fixed, as MNIST-C does."""
    params = transform.AffineTransform(**affine).params
    (a1, a2), (b1, b2) = params[0, :2], params[1, :2]
    shifted = transform.AffineTransform(**affine, translation=[13.5 * (1 - a1 - a2), 13.5 * (1 - b1 - b2)])
    return transform.warp(_unit(x), inverse_map=shifted)


def _line(c0: float, r0: float, c1: float, r1: float) -> np.ndarray:
    """MNIST-C's anti-aliased line from (c0, r0) to (c1, r1), intensity falling off over 2.3 pixels."""
    if c1 == c0:
        return np.zeros((28, 28))
    cols, rows = np.meshgrid(np.arange(28.0), np.arange(28.0), sparse=True)
    slope = (r1 - r0) / (c1 - c0)
    distance = np.clip(np.abs(rows - (slope * (cols - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - distance / 2.3) + 1, 0, 1) * np.ones((28, 28))
    line[:, : int(math.floor(c0))] = 0
    line[:, int(math.ceil(c1)) :] = 0
    return line


def _plasma(rng: np.random.Generator, size: int = 256, decay: float = 1.4) -> np.ndarray:
    """A diamond-square height map in [0, 1] (MNIST-C's fog uses one of 256x256, cropped to 28x28)."""
    heights = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = heights[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, axis=0)
        square += np.roll(square, -1, axis=1)
        noise = wibble * rng.uniform(-wibble, wibble, square.shape)
        heights[half:size:step, half:size:step] = square / 4 + noise
        centres = heights[half:size:step, half:size:step]
        corners = heights[0:size:step, 0:size:step]
        left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        heights[0:size:step, half:size:step] = left / 4 + wibble * rng.uniform(-wibble, wibble, left.shape)
        top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        heights[half:size:step, 0:size:step] = top / 4 + wibble * rng.uniform(-wibble, wibble, top.shape)
        step //= 2
        wibble /= decay
    heights -= heights.min()
    return heights / heights.max()


# MNIST-C ----------------------------------------------------------------------------------


def shot_noise(x, rng):  # severity 5
    return _uint8(rng.poisson(_unit(x) * 3) / 3)


def impulse_noise(x, rng):  # severity 4: 17% of pixels salt or pepper
    y = _unit(x)
    hit = rng.random(y.shape) < 0.17
    y[hit] = rng.random(hit.sum()) < 0.5
    return _uint8(y)


def glass_blur(x, rng):  # severity 1: sigma 0.7, pixels swapped within 1, twice
    y = np.uint8(filters.gaussian(_unit(x), sigma=0.7) * 255).tolist()
    swaps = rng.random((2, 26, 26)) < 0.5
    shifts = rng.integers(-1, 1, size=(2, 26, 26, 2)).tolist()
    for i in range(2):  # in MNIST-C's order: rows and columns from 27 down to 2
        for h in range(27, 1, -1):
            for w in range(27, 1, -1):
                if swaps[i, 27 - h, 27 - w]:
                    dy, dx = shifts[i][27 - h][27 - w]
                    y[h][w], y[h + dy][w + dx] = y[h + dy][w + dx], y[h][w]
    y = np.array(y, dtype=np.float64)
    return _uint8(filters.gaussian(y / 255, sigma=0.7))


def motion_blur(x, rng):  # severity 1: ImageMagick radius 10, sigma 3, angle in [-45, 45]
    angle = math.radians(rng.uniform(-45, 45))
    offsets = np.arange(0, 11)
    weights = np.exp(-(offsets**2) / (2 * 3.0**2))
    y = np.zeros((28, 28))
    for offset, weight in zip(offsets, weights, strict=True):
        shift = (offset * math.cos(angle), offset * math.sin(angle))  # one-sided, like ImageMagick's
        y += weight * transform.warp(_unit(x), transform.AffineTransform(translation=shift).inverse)
    return _uint8(y / weights.sum())


def shear(x, rng):  # severity 2
    return _uint8(_warp_about_centre(x, shear=0.4 * rng.choice([-1, 1])))


def scale(x, rng):  # severity 3: the digit shrunk to 70%
    return _uint8(_warp_about_centre(x, scale=(1 / 0.7, 1 / 0.7)))


def rotate(x, rng):  # severity 2: 0.4 rad (23 degrees) either way
    return _uint8(_warp_about_centre(x, rotation=0.4 * rng.choice([-1, 1])))


def brightness(x, rng):  # severity 5: +0.5 on the HSV value, which for grey is the grey level
    return _uint8(_unit(x) + 0.5)


def translate(x, rng):  # severity 3: 3 pixels along each axis
    shift = 3 * rng.choice([-1, 1], size=2)
    return _uint8(transform.warp(_unit(x), inverse_map=transform.AffineTransform(translation=shift)))


def stripe(x, rng):
    y = x.copy()
    y[:, :7] = 255 - y[:, :7]
    y[:, 21:] = 255 - y[:, 21:]
    return y


def fog(x, rng):  # severity 5: (3.0, 1.4)
    y = _unit(x)
    peak = y.max()
    return _uint8((y + 3.0 * _plasma(rng)[:28, :28]) * peak / (peak + 3.0))


def spatter(x, rng):  # severity 4: mud (0.65, 0.3, 1, 0.65, 1.5, 1)
    liquid = filters.gaussian(rng.normal(0.65, 0.3, size=(28, 28)), sigma=1)
    liquid[liquid < 0.65] = 0
    mud = filters.gaussian((liquid > 0.65).astype(np.float64), sigma=1.5)
    mud[mud < 0.8] = 0
    return _uint8(_unit(x) * (1 - mud) + 63 / 255 * mud)


def dotted_line(x, rng):
    r0, r1 = rng.integers(0, 27, size=2)
    line = _line(0, r0, 27, r1)
    for start in range(0, 28, 4):  # every other 2-pixel run of columns is left out
        line[:, start : start + 2] = 0
    return _uint8(_unit(x) + line)


def zigzag(x, rng):
    a = b = 2.0  # length and width of the zigzags
    c0, c1 = 2, 25
    r0 = int(rng.integers(0, 27))
    r1 = r0 + int(rng.integers(-5, 5))
    theta = math.atan((r1 - r0) / (c1 - c0))
    length = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    for i in range(int((length - a) // (2 * a)) + 1):
        points.append(((2 * i + 1) * a, (-1) ** i * b))
    end = 2 * a * (length // (2 * a))
    if length != end:
        points.append((length, points[-1][1] / (2 * (length - end))))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cols, rows = rotation @ np.array(points).T
    cols, rows = cols + c0, rows + r0
    y = _unit(x)
    for i in range(1, len(cols)):
        y = np.clip(y + _line(cols[i - 1], rows[i - 1], cols[i], rows[i]), 0, 1)
    return _uint8(y)


def canny_edges(x, rng):
    return _uint8(feature.canny(_unit(x)).astype(np.float64))


# What people's own digits bring ------------------------------------------------------------


def _resampled(side: int):
    def low_resolution(x, rng):
        small = Image.fromarray(x).resize((side, side), Image.Resampling.BOX)
        return np.asarray(small.resize((28, 28), Image.Resampling.BILINEAR))

    low_resolution.__name__ = f"low_res_{side}"
    return low_resolution


def _scanned(side: int):
    def low_res_scan(x, rng) -> Image.Image:
        """A digit scanned at very low resolution and uploaded as a user would: its ink cropped to
        fill the scanner's box, area-averaged to ``side`` pixels across (as a sensor bins light),
        quantised to 4 to 16 grey levels, smoothly upscaled to an upload of 28 to 300 pixels, a
        margin of up to a fifth of it on each side, either polarity, grey or RGB."""
        rows, cols = np.nonzero(x > 0.25 * x.max())
        crop = x[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        height, width = crop.shape
        box = np.zeros((max(height, width),) * 2, dtype=np.uint8)  # the longer side fills the box
        top, left = (box.shape[0] - height) // 2, (box.shape[1] - width) // 2
        box[top : top + height, left : left + width] = crop
        binned = np.asarray(Image.fromarray(box).resize((side, side), Image.Resampling.BOX), dtype=float)
        levels = int(rng.choice([4, 8, 16]))
        quantised = np.round(binned / 255 * (levels - 1)) * (255 / (levels - 1))
        size = int(rng.integers(28, 301))
        scan = Image.fromarray(quantised.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
        margins = rng.integers(0, size // 5 + 1, size=4)  # left, top, right, bottom
        page = Image.new("L", (size + margins[0] + margins[2], size + margins[1] + margins[3]), 0)
        page.paste(scan, (int(margins[0]), int(margins[1])))
        if rng.uniform() < 0.5:  # dark ink on paper, as most scans are
            page = Image.fromarray(255 - np.asarray(page))
        return page.convert("RGB") if rng.uniform() < 0.5 else page

    low_res_scan.__name__ = f"scan_{side}"
    return low_res_scan


def thick_strokes(x, rng):  # a felt pen: strokes 2 pixels wider (a 3x3 dilation)
    return np.asarray(Image.fromarray(x).filter(ImageFilter.MaxFilter(3)))


def thin_strokes(x, rng):  # a fine pen: strokes 1 pixel narrower (a 3x3 erosion at twice the size)
    large = Image.fromarray(x).resize((56, 56), Image.Resampling.BILINEAR).filter(ImageFilter.MinFilter(3))
    return np.asarray(large.resize((28, 28), Image.Resampling.BOX))


def inverted(x, rng):  # dark ink on white, as every scan and photo is
    return 255 - x


def jpeg(x, rng):  # quality 15, the middle of MNIST-C's JPEG severities
    buffer = io.BytesIO()
    Image.fromarray(x).save(buffer, format="JPEG", quality=15)
    return np.asarray(Image.open(buffer).convert("L"))


def photo_of_paper(x, rng) -> Image.Image:
    """The digit written large in dark blue ink on a cream page with uneven light and sensor
    noise: an RGB image of 224x224 that, like a user's photo, predict has to make MNIST-like."""
    side = 224
    ink = _unit(np.asarray(Image.fromarray(x).resize((side, side), Image.Resampling.BICUBIC)))
    paper = np.array([235.0, 228.0, 205.0]) * rng.uniform(0.85, 1.0)
    pen = np.array([40.0, 45.0, 110.0])
    rows, cols = np.mgrid[0:side, 0:side] / side
    light = 1 - 0.25 * (rng.uniform() * rows + rng.uniform() * cols)  # a shadow from one side
    page = paper * light[..., None]
    photo = page * (1 - ink[..., None]) + pen * ink[..., None] + rng.normal(0, 8, size=(side, side, 3))
    return Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8), mode="RGB")


MNIST_C = (
    shot_noise, impulse_noise, glass_blur, motion_blur, shear, scale, rotate, brightness,
    translate, stripe, fog, spatter, dotted_line, zigzag, canny_edges,
)  # fmt: skip
USERS = (
    _resampled(8), _resampled(12), _scanned(8), _scanned(10), _scanned(12),
    thick_strokes, thin_strokes, inverted, photo_of_paper, jpeg,
)  # fmt: skip
CORRUPTIONS = {f.__name__: f for f in (*MNIST_C, *USERS)}


def corrupt(name: str, digits: np.ndarray, seed: int = 0) -> list:
    """Corruption ``name`` of every digit in a uint8 (N, 28, 28) batch: arrays, or PIL images
    for ``photo_of_paper`` and the scans. Image i always gets the same corruption for the same seed."""
    function = CORRUPTIONS[name]
    return [function(digit, np.random.default_rng([seed, i])) for i, digit in enumerate(digits)]
