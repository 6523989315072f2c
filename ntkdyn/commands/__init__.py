"""Library-level CLI subcommands (theory tools and the spectrum); see :mod:`ntkdyn.cli`."""
