"""Attention kernels of HeteroSP: torch references and Triton implementations, one folder per op."""
