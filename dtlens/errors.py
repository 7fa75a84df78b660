"""Errors a user can cause. The CLI prints their message on one line and exits non-zero."""


class DtlensError(Exception):
    """Bad input: a missing file, a wrong key, a shape mismatch, an unknown name."""
