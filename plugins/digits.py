"""The offline demo data: scikit-learn's bundled 8x8 digits (1,797 real images, no download),
upsampled to the campaign's resolution and given three channels so any timm ViT takes them."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from optimizer.plugin_api import Splits

NUM_CLASSES = 10


def load_digits_splits(
    image_size: int = 32, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
) -> Splits:
    """Deterministic, stratification-free shuffle split; pixels scaled to about [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear")
    images = ((images - 0.5) / 0.5).repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(labels)))
    n_test = int(len(labels) * test_fraction)
    n_val = int(len(labels) * val_fraction)
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return Splits(
        train=TensorDataset(images[train], labels[train]),
        val=TensorDataset(images[val], labels[val]),
        test=TensorDataset(images[test], labels[test]),
        num_classes=NUM_CLASSES,
        input_shape=(3, image_size, image_size),
    )
