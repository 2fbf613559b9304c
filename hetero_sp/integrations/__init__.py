"""Plug-ins that run HeteroSP's attention and data inside other training frameworks.

Each plug-in imports its framework only when it is imported itself (``hetero_sp.integrations.
megatron`` needs the ``megatron`` extra), so HeteroSP works without any of them.
"""
