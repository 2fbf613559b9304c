"""Pieces shared by several kernel ops."""
