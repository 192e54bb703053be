"""Error types of the study.

Every error a user can trigger names the problem and the fix in its message, so
that a one-line report (``python -m megafr ...`` prints ``str(error)``) is enough.
"""


class MegaFRError(Exception):
    """Base class of every error the study raises on purpose."""


class InputError(MegaFRError, ValueError):
    """Bad user input: an unreadable image, a wrong image mode, a parameter out of range."""


class NoFaceError(InputError):
    """No face (or more than one face) was found in a photo that needs exactly one."""


class CheckpointError(MegaFRError):
    """A checkpoint or model file of the wrong kind, truncated, or from another configuration."""


class MissingFileError(CheckpointError, FileNotFoundError):
    """A required weight, model or data file is absent; the message says where to get it."""


class PreflightError(MissingFileError):
    """Files a profile needs before its pipeline can start are absent (``megafr.preflight``).

    The message lists every missing file, one per line, each with the parameter that names it
    and where to get it; ``missing`` holds the same entries as objects.
    """

    def __init__(self, message: str, missing: tuple = ()):
        super().__init__(message)
        self.missing = tuple(missing)  # megafr.preflight.Problem entries, one per missing file or folder
