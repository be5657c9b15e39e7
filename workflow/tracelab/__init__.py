"""tracelab: packet traces to validated tables, security features and comparisons."""

__version__ = "0.1.0"
