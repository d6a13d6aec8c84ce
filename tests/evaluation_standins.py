"""Stand-ins for the evaluation tests: a prompt set, images, and InceptionV3 weights in
torch-fidelity's layout (random, since the real file cannot be downloaded here)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

PROMPT_SETS = Path(__file__).resolve().parent / "data" / "prompt_sets"
"""A tiny collection in the shipped layout: general (zh, ru; 3 prompts) and culture (zh 2, ru 1)."""
MINIMUMS = {"general": {"zh": 3, "ru": 3}, "culture": {"zh": 2, "ru": 1}}


def write_random_images(folder: Path, count: int, seed: int, sizes=((40, 48), (64, 64), (50, 30))) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def write_inception_weights(path: Path, seed: int = 0) -> Path:
    """A state dict for torch-fidelity's InceptionV3 with its default random initialisation."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            """Keep the random initialisation (the weights file read in __init__ is empty)."""

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    empty = path.with_suffix(".empty.pth")
    torch.save({}, empty)
    net = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    empty.unlink()
    torch.save(net.state_dict(), path)
    return path
