"""PEA-Diffusion adapters and language encoders in plain PyTorch (no ComfyUI import)."""
from .encoders import ENCODER_KINDS, LanguageEncoder, load_language_encoder
from .errors import AdapterFileError, EncoderLoadError, IncompatibleError, NonFiniteError, PEAError
from .file_format import ADAPTER_SUFFIXES, infer_shape, load_adapter, read_adapter, save_adapter
from .metadata import AdapterInfo, EncoderSpec
from .module import AdapterShape, PEAAdapter
from .pairing import check_pairing

__all__ = [
    "ADAPTER_SUFFIXES", "ENCODER_KINDS", "AdapterFileError", "AdapterInfo", "AdapterShape",
    "EncoderLoadError", "EncoderSpec", "IncompatibleError", "LanguageEncoder", "NonFiniteError", "PEAAdapter",
    "PEAError", "check_pairing", "infer_shape", "load_adapter", "load_language_encoder",
    "read_adapter", "save_adapter",
]
