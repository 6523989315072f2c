"""Figure functions: arrays in, a matplotlib figure out (saving is :class:`ntkdyn.runs.RunDir`'s job)."""
