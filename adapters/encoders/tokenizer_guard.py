"""Running a tokenizer from a model file without letting it take the host down.

The ``tokenizers`` library is Rust: where a ``tokenizer.json`` makes it fail (a pre-tokenizer regex
that backtracks past Oniguruma's retry limit panics on the first long enough prompt), pyo3 raises
``pyo3_runtime.PanicException``, a ``BaseException``. ComfyUI's executor catches ``Exception``
only: its prompt worker thread would die and every later prompt wait forever. Every tokenizer call
of the pack runs inside :func:`tokenizer_panics`, which turns the panic into a
:class:`~adapters.errors.TokenizerError` naming the model.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

from ..errors import TokenizerError


def is_rust_panic(error: BaseException) -> bool:
    """True for pyo3's ``PanicException`` (each Rust extension defines its own class of that name)."""
    kind = type(error)
    return kind.__name__ == "PanicException" and kind.__module__ == "pyo3_runtime"


@contextlib.contextmanager
def tokenizer_panics(where: str | os.PathLike) -> Iterator[None]:
    """Run tokenizer calls, turning a panic of the tokenizers library into TokenizerError naming
    ``where`` (the model folder or file)."""
    try:
        yield
    except BaseException as e:
        if not is_rust_panic(e):
            raise
        reason = (str(e).strip().splitlines() or ["no reason given"])[0][:200]
        raise TokenizerError(
            f"The tokenizer of {where} crashed on this text (tokenizers library: {reason}). Its tokenizer files "
            f"are damaged or hostile (e.g. a pre-tokenizer regex that backtracks without end); use the "
            f"model's original tokenizer files.") from e
