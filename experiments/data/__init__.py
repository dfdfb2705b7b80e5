"""Data sources that need no network."""
