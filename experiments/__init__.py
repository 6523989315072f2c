"""One module per paper experiment: published settings as defaults, run, report."""
