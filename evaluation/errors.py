"""Errors of the evaluation tools; messages name the file, line or option at fault."""
from adapters.errors import PEAError


class EvaluationError(PEAError):
    """A setting, file or model given to the evaluator cannot be used."""


class PromptSetError(EvaluationError):
    """A prompt-set file breaks the schema (see :mod:`evaluation.prompts`)."""
