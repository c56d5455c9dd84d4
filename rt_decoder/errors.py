"""The exception hierarchy of rt-decoder, in one place.

::

    RtDecoderError                  base of everything raised on purpose
    ├── ConfigError                 bad or unknown settings (fail fast at setup)
    ├── DataFormatError             a file on disk is not what its format says (names the file)
    ├── ProtocolError               a wire message is malformed (names the field)
    │   └── MessageTooLargeError    a message exceeds the configured size limit
    ├── StageError                  a pipeline stage got input it cannot use (state left intact)
    │   └── ShapeMismatchError      e.g. a frame of the wrong length
    ├── ModelError                  a model directory / manifest is invalid or inconsistent
    └── BackendUnavailableError     a compute backend cannot run here (names what is missing)

    InputWarning (UserWarning)      input accepted, but something the user should know
                                    (e.g. ROIs that are NaN in every frame)

In the frame loop, ``ProtocolError`` and ``StageError`` are counted and the service keeps
running; anything else at start-up is fatal. This module imports nothing but the standard
library.
"""

from __future__ import annotations


class RtDecoderError(Exception):
    """Base class of all errors raised on purpose by rt-decoder."""


class ConfigError(RtDecoderError, ValueError):
    """Invalid settings: out of bounds, wrong type, or unknown keys."""


class DataFormatError(RtDecoderError, ValueError):
    """A file does not follow its format; the message names the file and the problem."""


class ProtocolError(RtDecoderError, ValueError):
    """A wire message is malformed; the message names what is wrong."""


class MessageTooLargeError(ProtocolError):
    """A wire message exceeds the configured size limit."""


class StageError(RtDecoderError, ValueError):
    """A stage received input it cannot process; its state is left unchanged."""


class ShapeMismatchError(StageError):
    """Input has the wrong shape for the stage (e.g. wrong number of ROIs)."""


class ModelError(RtDecoderError, ValueError):
    """A model directory or manifest is invalid or does not match the data."""


class BackendUnavailableError(RtDecoderError, RuntimeError):
    """A compute backend cannot run on this machine; the message says what is missing."""


class InputWarning(UserWarning):
    """Input was accepted but has a problem the user should know about (Python API)."""
