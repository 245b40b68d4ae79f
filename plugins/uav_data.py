"""Segmentation data for UAV scene parsing: synthetic aerial scenes (offline, exact masks) and a
loader for the LPCV 2023 UAV folder layout.

Both return the same :class:`~optimizer.plugin_api.Splits` as the classification sources, with
``(image, mask)`` samples: ``image`` a float ``(3, H, W)`` tensor scaled to about [-1, 1],
``mask`` a long ``(H, W)`` tensor of class indices, 255 where a pixel is ignored.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from optimizer.plugin_api import Splits

from .segmentation_metrics import IGNORE_INDEX

#: The synthetic scenes' classes, in label order.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "ground",
    "building",
    "road",
    "water",
    "vegetation",
    "vehicle",
)
SYNTHETIC_IMAGES = 400  # train + val + test
#: LPCV 2023 UAV scene parsing: 14 classes (0..13), 255 ignored.
LPCV_NUM_CLASSES = 14

GROUND, BUILDING, ROAD, WATER, VEGETATION, VEHICLE = range(6)
_PALETTE = {
    GROUND: (0.55, 0.48, 0.36),
    ROAD: (0.35, 0.35, 0.37),
    WATER: (0.12, 0.25, 0.50),
    VEGETATION: (0.18, 0.42, 0.15),
}


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: a ``cells``×``cells`` random grid bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size, endpoint=False)
    i = coords.astype(int)
    f = coords - i
    top = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    bottom = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return top * (1 - f)[:, None] + bottom * f[:, None]


def synthetic_scene(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One aerial-like scene: ``(image float32 (3, size, size) in [0, 1], mask uint8)``.

    Painted in order, each layer overwriting the mask where it lies: textured ground,
    vegetation (thresholded noise), water (blobs), roads (thick straight lines), buildings
    (rooftop rectangles with a darker rim), vehicles (small rectangles on road pixels)."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.full((size, size), GROUND, dtype=np.uint8)
    texture = _smooth_noise(rng, size, max(2, size // 8))
    image = np.empty((3, size, size), dtype=np.float32)
    for c in range(3):
        image[c] = _PALETTE[GROUND][c] * (0.8 + 0.4 * texture)

    def paint(region: np.ndarray, label: int, color: np.ndarray | tuple, jitter: float) -> None:
        mask[region] = label
        shade = 1.0 + jitter * (rng.random(int(region.sum())) - 0.5)
        for c in range(3):
            image[c][region] = np.clip(color[c] * shade, 0, 1)

    vegetation = _smooth_noise(rng, size, max(2, size // 16)) > rng.uniform(0.6, 0.75)
    paint(vegetation, VEGETATION, _PALETTE[VEGETATION], 0.6)
    for _ in range(rng.integers(0, 3)):
        cy, cx = rng.uniform(0, s, 2)
        ry, rx = rng.uniform(0.06, 0.16, 2) * s
        wobble = 1 + 0.25 * np.sin(np.arctan2(yy - cy, xx - cx) * rng.integers(2, 5))
        paint(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < wobble, WATER, _PALETTE[WATER], 0.2)
    road = np.zeros((size, size), dtype=bool)
    for _ in range(rng.integers(1, 4)):
        angle = rng.uniform(0, np.pi)
        offset = rng.uniform(0.2, 0.8) * s
        width = rng.uniform(0.04, 0.08) * s
        distance = np.abs((xx - s / 2) * np.sin(angle) - (yy - s / 2) * np.cos(angle))
        road |= np.abs(distance - (offset - s / 2)) < width / 2
    paint(road, ROAD, _PALETTE[ROAD], 0.15)
    for _ in range(rng.integers(2, 7)):
        h, w = (rng.uniform(0.08, 0.2, 2) * s).astype(int) + 2
        y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
        roof = np.zeros((size, size), dtype=bool)
        roof[y0 : y0 + h, x0 : x0 + w] = True
        if (roof & road).sum() > 0.3 * roof.sum():  # keep most of the roads visible
            continue
        color = rng.uniform(0.45, 0.95, 3) * np.array([1.0, 0.8, 0.75])
        paint(roof, BUILDING, color, 0.1)
        rim = roof.copy()
        rim[y0 + 1 : y0 + h - 1, x0 + 1 : x0 + w - 1] = False
        image[:, rim] *= 0.6
    road_pixels = np.argwhere(mask == ROAD)
    for _ in range(rng.integers(0, 6) if len(road_pixels) else 0):
        y, x = road_pixels[rng.integers(len(road_pixels))]
        h, w = max(2, int(0.035 * s)), max(2, int(0.06 * s))
        if rng.random() < 0.5:
            h, w = w, h
        car = np.zeros((size, size), dtype=bool)
        car[y : y + h, x : x + w] = True
        paint(car, VEHICLE, rng.choice([(0.9, 0.1, 0.1), (0.95, 0.95, 0.95), (0.1, 0.3, 0.9)]), 0.1)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return np.clip(image, 0, 1), mask


@functools.cache
def synthetic_scenes(
    size: int, count: int = SYNTHETIC_IMAGES, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` scenes as ``(images (N, 3, size, size) in [-1, 1], masks (N, size, size))``,
    deterministic from ``seed`` and cached per process."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), dtype=np.float32)
    masks = np.empty((count, size, size), dtype=np.int64)
    for index in range(count):
        images[index], masks[index] = synthetic_scene(size, rng)
    return torch.from_numpy((images - 0.5) / 0.5), torch.from_numpy(masks)


def load_synthetic_splits(
    image_size: int = 64,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    count: int = SYNTHETIC_IMAGES,
) -> Splits:
    images, masks = synthetic_scenes(image_size, count, seed)
    n_test = int(count * test_fraction)
    n_val = int(count * val_fraction)
    test, val, train = slice(0, n_test), slice(n_test, n_test + n_val), slice(n_test + n_val, None)
    return Splits(
        train=TensorDataset(images[train], masks[train]),
        val=TensorDataset(images[val], masks[val]),
        test=TensorDataset(images[test], masks[test]),
        num_classes=len(SYNTHETIC_CLASSES),
        input_shape=(3, image_size, image_size),
    )


class UavFolderError(ValueError):
    """A file of an LPCV UAV folder is missing, unreadable or malformed (the message names it)."""


def _read_image(path: Path, image_size: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            rgb = opened.convert("RGB").resize((image_size, image_size), Image.BILINEAR)
    except Exception as exc:  # PIL raises many types for a broken file
        raise UavFolderError(f"{path}: unreadable image: {exc}") from None
    array = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
    return torch.from_numpy((array - 0.5) / 0.5)


def _read_label(path: Path, image_size: int, num_classes: int) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(path) as opened:
            if opened.mode not in ("L", "P", "I", "I;16"):
                raise UavFolderError(
                    f"{path}: a label map must be single-channel class indices, got mode "
                    f"{opened.mode}"
                )
            label = opened.resize((image_size, image_size), Image.NEAREST)
            array = np.asarray(label).astype(np.int64)
    except UavFolderError:
        raise
    except Exception as exc:
        raise UavFolderError(f"{path}: unreadable label map: {exc}") from None
    bad = (array >= num_classes) & (array != IGNORE_INDEX)
    if bad.any():
        raise UavFolderError(
            f"{path}: label {int(array[bad].max())} outside 0..{num_classes - 1} "
            f"(and not {IGNORE_INDEX}, the ignore index)"
        )
    return torch.from_numpy(array)


class UavFolder(Dataset):
    """``(image, mask)`` pairs read from disk on access (a 512 px LPCV split does not fit in
    memory as tensors), resized to ``image_size``: images bilinear, labels nearest."""

    def __init__(self, pairs: list[tuple[Path, Path]], image_size: int, num_classes: int):
        self.pairs = pairs
        self.image_size = image_size
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.pairs[index]
        return (
            _read_image(image, self.image_size),
            _read_label(label, self.image_size, self.num_classes),
        )


def _pairs(root: Path, part: str) -> list[tuple[Path, Path]]:
    images, labels = root / "IMG" / part, root / "GT" / part
    for folder in (images, labels):
        if not folder.is_dir():
            raise UavFolderError(
                f"{folder} is missing (expected {root}/IMG/{{train,val}} "
                f"and {root}/GT/{{train,val}})"
            )
    pairs = []
    for image in sorted(images.glob("*.png")):
        label = labels / image.name
        if not label.is_file():
            raise UavFolderError(f"{image}: no label map {label}")
        pairs.append((image, label))
    if not pairs:
        raise UavFolderError(f"{images}: no .png images")
    return pairs


def _check_headers(pairs: list[tuple[Path, Path]]) -> None:
    """Open every file's header now, so that a broken file stops the campaign before it starts
    (and names the file) rather than failing trials one by one."""
    from PIL import Image

    for pair in pairs:
        for path in pair:
            try:
                with Image.open(path) as opened:
                    opened.verify()
            except Exception as exc:
                raise UavFolderError(f"{path}: unreadable or malformed PNG: {exc}") from None


def load_uav_folder(path: Path, image_size: int, seed: int = 0) -> Splits:
    """The LPCV 2023 UAV layout ``path/IMG/{train,val}/*.png`` + ``path/GT/{train,val}/*.png``
    (label maps with the image's file name). ``val`` is split in half into the validation set
    (fine-tuning feedback) and the held-out test set (the final mIoU). The number of classes is
    the line count of ``path/classes.txt`` when present, else LPCV's 14."""
    path = Path(path)
    classes = path / "classes.txt"
    num_classes = (
        len([line for line in classes.read_text().splitlines() if line.strip()])
        if classes.is_file()
        else LPCV_NUM_CLASSES
    )
    train, held_out = _pairs(path, "train"), _pairs(path, "val")
    _check_headers(train + held_out)
    order = torch.randperm(len(held_out), generator=torch.Generator().manual_seed(seed)).tolist()
    half = max(1, len(order) // 2)
    return Splits(
        train=UavFolder(train, image_size, num_classes),
        val=UavFolder([held_out[i] for i in order[:half]], image_size, num_classes),
        test=UavFolder([held_out[i] for i in order[half:]] or held_out, image_size, num_classes),
        num_classes=num_classes,
        input_shape=(3, image_size, image_size),
    )
