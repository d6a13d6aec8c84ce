"""Shared fixtures: tiny stand-in encoders built once per test session."""
import pytest

from adapters import tiny as standins


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    """kind -> folder holding a tiny stand-in of that encoder family, in its real layout."""
    root = tmp_path_factory.mktemp("language_clip")
    dirs = {kind: make(root / kind) for kind, make in standins.ENCODER_MAKERS.items()}
    for model_type in ("mt5", "umt5"):
        dirs[model_type] = standins.make_t5(root / model_type, model_type=model_type)
    return dirs
