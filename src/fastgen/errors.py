"""The exceptions fastgen raises for user-facing failures.

Every message is one line that names the file (or argument) and the problem, so the CLI can print
it as-is and exit non-zero without a traceback.
"""
from __future__ import annotations


class FastgenError(Exception):
    """Base class of every error fastgen reports to a user."""


class InputError(FastgenError, ValueError):
    """Bad user input: a missing, unreadable or malformed file or argument."""


class ModelError(FastgenError):
    """A model file is missing, malformed, or does not fit the expected architecture."""


class AvatarError(FastgenError):
    """An avatar directory, package or pack is missing pieces or inconsistent."""
