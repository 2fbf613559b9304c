"""Distributed tests: gloo ranks from the shared rank pool (tests/rank_pool.py), no torchrun."""
