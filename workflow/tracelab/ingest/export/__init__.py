"""Wireshark CSV exports: the file's bytes, gunzipped (source) and handed to pyarrow as whole
lines of UTF-8 (stream); the header (header); where rows are (lines); Time (times); the row
checks (rows) and exact copies (duplicates); `reader.stage` puts them together."""
