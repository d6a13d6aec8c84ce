"""Exceptions with messages meant for the person who picked the file."""


class PEAError(Exception):
    """Base class for every error the pack raises on purpose."""


class AdapterFileError(PEAError):
    """An adapter file is missing, damaged, or not a PEA adapter."""


class EncoderLoadError(PEAError):
    """A language encoder folder or file cannot be loaded."""


class IncompatibleError(PEAError):
    """Two parts that must agree (encoder and adapter, adapter and base model) do not."""


class PromptError(PEAError):
    """A prompt asks for something the PEA CLIP it was given cannot read."""


class NonFiniteError(PEAError):
    """NaN or infinite values where finite ones are needed (conditioning, a training step's loss
    or gradients, weights about to be written); the message says where and what to do."""


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages: object, array, string, ..."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


class TokenizerError(EncoderLoadError):
    """A tokenizer's own files make it unusable: a class not made for the model, or a crash of the
    tokenizers library on a prompt (a hostile or damaged ``tokenizer.json``)."""


def shown(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about values read from files (a
    million-entry list or a 5000-digit number must not become the message)."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"a number of about {int(value.bit_length() * 0.30103)} digits"
    return text if len(text) <= limit else text[:limit] + "..."
