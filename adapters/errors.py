"""Exceptions with messages meant for the person who picked the file."""


class PEAError(Exception):
    """Base class for every error the pack raises on purpose."""


class AdapterFileError(PEAError):
    """An adapter file is missing, damaged, or not a PEA adapter."""


class EncoderLoadError(PEAError):
    """A language encoder folder or file cannot be loaded."""


class IncompatibleError(PEAError):
    """Two parts that must agree (encoder and adapter, adapter and base model) do not."""


class NonFiniteError(PEAError):
    """NaN or infinite values where finite ones are needed (conditioning, a training step's loss
    or gradients, weights about to be written); the message says where and what to do."""


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages: object, array, string, ..."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
