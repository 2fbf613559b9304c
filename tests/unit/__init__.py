"""Unit tests: one process, no process group."""
