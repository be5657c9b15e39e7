"""Stage 3: per-trace summary and distributions of the packet table."""
