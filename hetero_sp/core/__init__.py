"""Torch-free leaves every other part may import: the names of strategies, backends and modes,
the user-error class, Ulysses head arithmetic, the bytes each SP strategy moves, and model
FLOPs. Nothing here imports torch or another HeteroSP package (``hetero_sp.config`` aside)."""
