"""Errors fxverify raises for bad input.

Every error a user can cause (a bad model, spec, data file or solver set-up) is an
:class:`FxverifyError`. Its message is one line that names the problem; the CLI prints it
and exits with code 2. Anything else escaping the library is a bug in fxverify.
"""

from __future__ import annotations

import re

#: Characters that must never reach a terminal raw from a file: C0 controls but tab and
#: newline (ESC starts ANSI and OSC sequences), DEL, C1 controls (0x9b is a one-byte CSI), and
#: the bidirectional overrides, embeddings and isolates that make text read in another order.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text) -> str:
    """``text`` with every terminal control character and bidirectional override written as
    an escape (``\\x1b``, ``\\u202e``): names, paths and producers read from files are shown,
    never executed by the terminal."""
    return _UNPRINTABLE.sub(_escape, str(text))


class FxverifyError(Exception):
    """Base class of all user-facing errors. ``str(err)`` is a single line, with anything a
    terminal would interpret (escape sequences, bidirectional overrides) escaped."""

    def __init__(self, message: str) -> None:
        # One line, always: multi-line causes (protobuf, jsonschema) are folded.
        super().__init__(printable(" ".join(str(message).split())))


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


class ArgumentError(FxverifyError, TypeError):
    """A documented function was called with an argument of the wrong type or value (a
    ``TypeError`` too, for callers that catch those)."""
