"""What a run writes and keeps: its files (log, loss plot, checkpoints, summary), its loss lines,
its previews, and the guard that keeps a new run off a previous run's files."""
