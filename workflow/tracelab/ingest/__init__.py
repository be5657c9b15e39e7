"""Stages 1 and 2: the trace sheet, validation of Wireshark CSV exports and pcap/pcapng captures,
and normalization into the packet table."""
