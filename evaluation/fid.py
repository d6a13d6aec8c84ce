"""FID with torch-fidelity's InceptionV3 (the TF-FID network and resizing) from a local weights file.

torch-fidelity downloads its weights unless given a file; here the file is always the user's
(``weights-inception-2015-12-05-6726825d.pth`` from torch-fidelity's releases). The library
reads it with ``weights_only=False``, so it is first read here with ``weights_only=True``: a file
holding anything but tensors is refused before the library sees it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from PIL import Image

from adapters.pickle_file import load_pickle

from .errors import EvaluationError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DIMS = (64, 192, 768, 2048)
"""InceptionV3 feature layers (as pytorch-fid's ``--dims``); FID proper uses 2048."""


def _import_torch_fidelity():
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
    except ImportError as e:
        raise EvaluationError("FID needs the torch-fidelity package: pip install torch-fidelity") from e
    return FeatureExtractorInceptionV3, fid_features_to_statistics, fid_statistics_to_metric, KEY_METRIC_FID


def _check_weights(path: Path) -> None:
    if not path.is_file():
        raise EvaluationError(f"Inception weights not found: {path} (torch-fidelity's "
                              f"weights-inception-2015-12-05-6726825d.pth; nothing is downloaded)")
    state = load_pickle(path, EvaluationError)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise EvaluationError(f"{path} is not a state dict of tensors (expected torch-fidelity's InceptionV3 weights)")


def image_files(folder: Path) -> list[Path]:
    """The images in ``folder`` and its subfolders, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class FID:
    """Fréchet Inception Distance of image sets against one reference set."""

    def __init__(self, weights: str | os.PathLike, device: torch.device | str = "cpu", dims: int = 2048):
        if dims not in DIMS:
            raise EvaluationError(f"FID feature dims must be one of {', '.join(map(str, DIMS))}, not {dims}")
        weights = Path(weights)
        _check_weights(weights)
        extractor_class, self._statistics, self._metric, self._key = _import_torch_fidelity()
        try:
            self.extractor = extractor_class("inception-v3-compat", [str(dims)],
                                             feature_extractor_weights_path=str(weights)).to(device)
        except RuntimeError as e:  # load_state_dict: wrong keys or shapes
            raise EvaluationError(f"{weights} does not fit torch-fidelity's InceptionV3: {e}") from e
        self.device = torch.device(device)
        self.reference: dict | None = None

    @torch.no_grad()
    def features(self, paths: Iterable[Path]) -> torch.Tensor:
        """Pool features ``[N, dims]`` on the CPU, one image at a time (sizes may differ)."""
        rows = []
        for path in paths:
            try:
                with Image.open(path) as im:
                    pixels = np.array(im.convert("RGB"), dtype=np.uint8)
            except OSError as e:
                raise EvaluationError(f"{path} cannot be read as an image: {e}") from e
            batch = torch.from_numpy(pixels).permute(2, 0, 1)[None].to(self.device)
            (feature,) = self.extractor(batch)
            rows.append(feature.cpu())
        if len(rows) < 2:
            raise EvaluationError(f"FID needs at least 2 images per set, got {len(rows)}")
        return torch.cat(rows)

    def set_reference(self, folder: str | os.PathLike) -> int:
        """Read the reference images once; returns their number."""
        folder = Path(folder)
        if not folder.is_dir():
            raise EvaluationError(f"FID reference folder not found: {folder}")
        paths = image_files(folder)
        if len(paths) < 2:
            raise EvaluationError(f"{folder} holds {len(paths)} images ({', '.join(IMAGE_SUFFIXES)}); FID needs more")
        self.reference = self._statistics(self.features(paths))
        return len(paths)

    def distance(self, paths: list[Path]) -> float:
        """FID of the images at ``paths`` against the reference set."""
        if self.reference is None:
            raise RuntimeError("set_reference() first")
        fid = self._metric(self._statistics(self.features(paths)), self.reference, verbose=False)[self._key]
        if not np.isfinite(fid):
            raise FloatingPointError(f"FID came out {fid} for {len(paths)} images")
        return fid
