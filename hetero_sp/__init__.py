"""HeteroSP: heterogeneous sequence parallelism for long-context training of hybrid models."""

__version__ = "0.1.0"
