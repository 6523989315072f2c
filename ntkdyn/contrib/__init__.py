"""Optional bridges to third-party libraries; nothing in the core of ntkdyn imports this package."""
