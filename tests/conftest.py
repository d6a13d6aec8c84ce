"""Shared fixtures: tiny stand-in encoders built once per test session."""
import pytest

from adapters import tiny as standins


@pytest.fixture(scope="session")
def encoder_dirs(tmp_path_factory):
    """kind -> folder holding a tiny stand-in of that encoder family, in its real layout."""
    root = tmp_path_factory.mktemp("language_clip")
    return {kind: make(root / kind) for kind, make in standins.ENCODER_MAKERS.items()}
