"""Training loops (vmapped seeds, sharding, epochs with checkpoints), groups and metrics."""
