"""The two kinds of failure a user can meet, kept apart so the command line can tell them apart.

* :class:`InputError` — the user's input is wrong: a setting, a file, data. It is a ``ValueError``
  (so Python callers catch it as one) whose message names the argument, flag or path, the value
  received and what to do. Validation at the boundary raises it; the command line prints it as one
  line with exit status 2. :class:`ntkdyn.settings.ConfigError` is one.
  Two kinds of it have their own class: :class:`DataError` (a data file that cannot be read as
  the format it claims: truncated, corrupt, wrong shapes or values) and :class:`OutputError` (the
  run directory cannot be written: read-only, no permission, disk full, or in use by another run).
  Both are the user's to fix, so both are input errors (exit status 2 on the command line).
* Anything else that escapes a command (a plain ``ValueError`` from deep inside, a
  :class:`ntkdyn.dynamics.SolverError`, a numpy or JAX error) is a fault of ntkdyn or of the
  numerics, not of the user: the command line says it is an internal error, exit status 1, and
  ``--debug`` (or ``NTKDYN_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

__all__ = ["DataError", "InputError", "OutputError"]


class InputError(ValueError):
    """Invalid input from the user (a setting, a file or data), with the argument and the fix named.

    Example:
        >>> err = InputError("--data: no file data.npz; pass an existing .npz file")
        >>> isinstance(err, ValueError), str(err).split(":")[0]
        (True, '--data')
    """


class DataError(InputError):
    """A data file that cannot be read as its format: truncated, corrupt, wrong shape, dtype or value.

    The message starts with the flag or the file and says what was found and what to do.
    """


class OutputError(InputError):
    """The output cannot be written: a read-only or full disk, no permission, or a run in progress.

    The message names the file or folder, the system's reason and what to do.
    """
