"""pcap/pcapng captures: record framing (reader), header decoding and Wireshark-style TCP analysis."""
