"""Integration tests: torchrun, DeepSpeed, the CLIs as subprocesses, launchers, golden losses, Megatron."""
