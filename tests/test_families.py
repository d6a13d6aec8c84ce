"""The family table: one place for every width an adapter head and a base model agree on."""
import pytest

from adapters import AdapterShape, PEAAdapter
from adapters.errors import IncompatibleError
from adapters.families import FAMILIES, HEADS, supported_models
from adapters.pairing import check_base_model


def test_each_family_builds_an_adapter_that_gives_its_conditioning():
    import torch

    for head, family in FAMILIES.items():
        shape = AdapterShape.for_head(head, 16, (8,))
        assert (shape.token_dim, shape.pooled_dim) == (family.context_dim, family.pooled_dim)
        tokens, pooled = PEAAdapter(shape)(torch.randn(2, 5, 16))
        assert tokens.shape == (2, 5, family.context_dim)
        assert (pooled is None) == (family.pooled_dim is None)
        assert pooled is None or pooled.shape == (2, family.pooled_dim)
        assert AdapterShape.for_family(family, 16).hidden_dims == family.hidden
    assert HEADS == ("sd15", "sdxl", "flux")
    assert [f.label for f in FAMILIES.values() if f.trainable] == ["SD1.5", "SDXL"]
    assert "FLUX.1 (Flux, FluxSchnell, FluxInpaint)" in supported_models()


def test_an_adapter_of_another_family_is_refused_naming_both():
    sd15 = AdapterShape.for_head("sd15", 16, (8,))
    check_base_model(sd15, "a.safetensors", "SD1.5 model", FAMILIES["sd15"])
    with pytest.raises(IncompatibleError, match=r"'a.safetensors' is made for SD1.5 \(768-d tokens, no pooled "
                                                r"vector\), but the model 'x' is SDXL and needs 2048-d context and a "
                                                r"1280-d pooled vector"):
        check_base_model(sd15, "a.safetensors", "x", FAMILIES["sdxl"])
