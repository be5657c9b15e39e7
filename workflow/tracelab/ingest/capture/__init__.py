"""pcap/pcapng captures: record framing (reader), header decoding (decode) and
Wireshark-style TCP analysis (tcp_analysis)."""
