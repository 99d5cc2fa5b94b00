"""Errors fxverify raises for bad input.

Every error a user can cause (a bad model, spec, data file or solver set-up) is an
:class:`FxverifyError`. Its message is one line that names the problem; the CLI prints it
and exits with code 2. Anything else escaping the library is a bug in fxverify.
"""

from __future__ import annotations


class FxverifyError(Exception):
    """Base class of all user-facing errors. ``str(err)`` is a single line."""

    def __init__(self, message: str) -> None:
        # One line, always: multi-line causes (protobuf, jsonschema) are folded.
        super().__init__(" ".join(str(message).split()))


class ModelError(FxverifyError):
    """The ONNX file cannot be read or does not describe a supported network."""


class AgreementError(ModelError):
    """The imported network disagrees with onnxruntime beyond the tolerance."""


class DataError(FxverifyError):
    """A data file is missing, malformed, or does not hold what the spec asks for."""


class SpecError(FxverifyError):
    """A spec file is missing, not JSON, or not valid against the schema."""


class CutError(FxverifyError):
    """A cut name that the network does not have, or a method that cannot handle it."""


class SolverError(FxverifyError):
    """A solver or solver profile is unknown, not installed, or not licensed."""
