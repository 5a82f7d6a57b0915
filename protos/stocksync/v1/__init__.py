"""Generated protobuf code for package stocksync.v1 (see scripts/gen_protos.py)."""
