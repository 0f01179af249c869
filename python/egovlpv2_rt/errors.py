"""The package's own error types.

Every error that bad input can cause derives from :class:`EgoVLPv2Error`, so a caller (and a
property test) can tell "the package refused this input, with a message" from a bug. Input
errors are also ``ValueError`` subclasses, so code written against the built-in types keeps
working.
"""

from __future__ import annotations

__all__ = ["EgoVLPv2Error", "InputError", "OutputBusyError", "UnsafeFileError"]


class EgoVLPv2Error(Exception):
    """Base class of every error egovlpv2-rt raises on purpose."""


class InputError(EgoVLPv2Error, ValueError):
    """An argument, option, config field or file content is not what was expected; the
    message names the file or field, the value and what was expected."""


class UnsafeFileError(InputError):
    """A file would need code to run to be read (a pickle of arbitrary objects); it is refused
    and the message says how to convert it."""


class OutputBusyError(EgoVLPv2Error, RuntimeError):
    """Another process is writing the same output; refused instead of racing it."""
