"""Across traces: the trace comparison and the security comparison (tables and figures)."""
