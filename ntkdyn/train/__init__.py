"""Training loops (vmapped seeds, sharding), checkpoints and metrics."""
