"""stocksync: real-time warehouse stock for live-commerce rooms."""
