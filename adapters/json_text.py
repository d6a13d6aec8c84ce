"""Parsing JSON read from model files (configs, headers, metadata) into the pack's errors."""
from __future__ import annotations

import json
import os

from .errors import EncoderLoadError, PEAError, json_type


def parse_json(text: str | bytes, where: str, error: type[PEAError]) -> object:
    """The value in ``text`` (UTF-8 bytes or str); ``error`` naming ``where`` when it is not valid
    JSON, holds a number too long for Python to read (over 4300 digits) or nests too deep."""
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except RecursionError:
        raise error(f"{where} nests arrays or objects too deep to be read") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and int digit limits, are ValueErrors
        raise error(f"{where} is not valid JSON: {str(e)[:200]}") from e


def parse_json_object(text: str | bytes, where: str | os.PathLike, error: type[PEAError] = EncoderLoadError) -> dict:
    """A JSON object (a config, an index) from ``text``; ``error`` naming ``where`` otherwise."""
    value = parse_json(text, str(where), error)
    if not isinstance(value, dict):
        raise error(f"{where} is a JSON {json_type(value)}, expected an object")
    return value
