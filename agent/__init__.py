"""The warehouse edge agent."""
