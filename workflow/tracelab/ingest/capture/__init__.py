"""pcap/pcapng captures, by concern:

- reader: the stage (checks, damage reporting, the decoding pipeline); stream: the file's
  bytes, gunzipped; records: what the framers share; pcap, pcapng: record framing.
- decode: packet headers to the packet table's columns, from columns (Arrow columns out of
  packet bytes), link (link and network layers) and payload (TLS records, DNS queries).
- tcp_analysis: Wireshark-style TCP analysis across batches, over tcp_batch (a batch sorted
  by conversation) and tcp_rules (one rule per analysis flag); grouped: array primitives.
"""
