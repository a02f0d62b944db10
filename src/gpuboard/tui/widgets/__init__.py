"""The board's widgets; each renders its part of a Snapshot and nothing else."""
