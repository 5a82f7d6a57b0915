"""The central hub."""
