"""The package's own error types.

Every error that bad input can cause derives from :class:`EgoVLPv2Error`, so a caller (and a
property test) can tell "the package refused this input, with a message" from a bug. Input
errors are also ``ValueError`` subclasses, so code written against the built-in types keeps
working.
"""

from __future__ import annotations

__all__ = ["EgoVLPv2Error", "InputError", "OutputBusyError", "UnsafeFileError", "one_line"]

_MAX_ERROR = 400


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


def one_line(exc: BaseException) -> str:
    """An exception as one line: its message with newlines folded, cut at 400 characters;
    exceptions that are not input errors are prefixed with their type."""
    msg = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    if isinstance(exc, KeyError) and msg.startswith("'"):
        msg = f"missing key {msg}"
    if not msg:
        msg = type(exc).__name__
    expected = (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError, EgoVLPv2Error)
    if not isinstance(exc, expected):
        msg = f"{type(exc).__name__}: {msg}"
    if len(msg) > _MAX_ERROR:
        msg = msg[: _MAX_ERROR - 3] + "..."
    return msg
