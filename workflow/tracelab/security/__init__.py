"""Security features per trace: connections (Zeek-style), HTTP/Log4Shell, scan verdicts, windows."""
