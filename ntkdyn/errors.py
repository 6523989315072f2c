"""The two kinds of failure a user can meet, kept apart so the command line can tell them apart.

* :class:`InputError` — the user's input is wrong: a setting, a file, data. It is a ``ValueError``
  (so Python callers catch it as one) whose message names the argument, flag or path, the value
  received and what to do. Validation at the boundary raises it; the command line prints it as one
  line with exit status 2. :class:`ntkdyn.settings.ConfigError` is one.
* Anything else that escapes a command (a plain ``ValueError`` from deep inside, a
  :class:`ntkdyn.dynamics.SolverError`, a numpy or JAX error) is a fault of ntkdyn or of the
  numerics, not of the user: the command line says it is an internal error, exit status 1, and
  ``--debug`` (or ``NTKDYN_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """Invalid input from the user (a setting, a file or data), with the argument and the fix named.

    Example:
        >>> err = InputError("--data: no file data.npz; pass an existing .npz file")
        >>> isinstance(err, ValueError), str(err).split(":")[0]
        (True, '--data')
    """
