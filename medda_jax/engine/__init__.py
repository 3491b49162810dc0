"""Generic training machinery: states, scanned loops, checkpoints, writers, progress."""
