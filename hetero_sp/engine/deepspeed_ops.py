"""DeepSpeed's compiled op: one build folder per Python environment, and a line when it builds.

On CPU, ``deepspeed.initialize`` loads DeepSpeed's shared-memory collective op
(``deepspeed.ops.comm.deepspeed_shm_comm_op``, from ``ShareMemCommBuilder``). DeepSpeed ships
it as source: the first load in an environment compiles it with torch's extension loader into
``TORCH_EXTENSIONS_DIR`` (2-4 minutes on a 2-core machine), printing nothing until it is done.
torch keys a build by its sources and flags, which hold the environment's own paths, so two
environments sharing one folder rebuild the op each time the other one built it last, and two
runs that start together rebuild each other's. So every environment gets a folder of its own,
named by its Python, torch and DeepSpeed versions and its path (:func:`extensions_dir`); a
``TORCH_EXTENSIONS_DIR`` already set is kept.

``python -m hetero_sp.engine.deepspeed_ops`` prints that folder (the launch scripts export it);
``--build`` compiles the op into it (``launch/install_cpu.sh`` does, once at install).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path

OP_BUILDER = "ShareMemCommBuilder"
"""DeepSpeed's builder of the op, as its accelerator names it."""

CACHE_ROOT = Path.home() / ".cache" / "hetero_sp" / "torch_extensions"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def environment_key(prefix: str | None = None, versions: dict[str, str] | None = None) -> str:
    """``py3.11-torch2.13.0-deepspeed0.19.8-<8 hex digits of the environment's path>``."""
    prefix = os.path.realpath(prefix or sys.prefix)
    if versions is None:
        versions = {name: _version(name) for name in ("torch", "deepspeed")}
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    named = "-".join(f"{name}{version}" for name, version in sorted(versions.items()))
    digest = hashlib.sha256(prefix.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{python}-{named}-{digest}")


def extensions_dir(prefix: str | None = None, versions: dict[str, str] | None = None) -> Path:
    """This environment's own build folder under ``~/.cache/hetero_sp/torch_extensions``."""
    return CACHE_ROOT / environment_key(prefix, versions)


def use_environment_dir(environ: MutableMapping[str, str] | None = None) -> str:
    """``TORCH_EXTENSIONS_DIR``: kept when set (and not empty), else this environment's folder."""
    environ = os.environ if environ is None else environ
    if not environ.get("TORCH_EXTENSIONS_DIR"):
        environ["TORCH_EXTENSIONS_DIR"] = str(extensions_dir())
    return environ["TORCH_EXTENSIONS_DIR"]


def _builder():
    """DeepSpeed's builder of the op when this machine compiles it at start-up, else None."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import installed_ops

    builder = get_accelerator().create_op_builder(OP_BUILDER)
    if builder is None or installed_ops.get(builder.NAME, False):
        return None  # not used on this accelerator, or compiled into the installed DeepSpeed
    if not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None  # DeepSpeed falls back to torch's collectives
    return builder


def pending_build(builder=None, build_root: str | Path | None = None) -> str | None:
    """What loading the op will compile, as a sentence; None when it is built already."""
    builder = _builder() if builder is None else builder
    if builder is None:
        return None
    root = Path(build_root or use_environment_dir())
    if (root / builder.NAME / f"{builder.NAME}.so").is_file():
        return None
    return (
        f"building DeepSpeed's {builder.absolute_name()} into {root} (once per Python "
        "environment; 2-4 minutes on a 2-core machine, with nothing else printed meanwhile; "
        "launch/install_cpu.sh builds it at install)"
    )


def announce_build(say: Callable[[str], None], builder=None) -> None:
    """Set this environment's build folder and ``say`` what is about to be compiled, if any."""
    use_environment_dir()
    message = pending_build(builder)
    if message is not None:
        say(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hetero_sp.engine.deepspeed_ops", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--build", action="store_true", help="compile DeepSpeed's op now")
    args = parser.parse_args(argv)
    folder = use_environment_dir()
    if not args.build:
        print(folder)
        return 0
    builder = _builder()
    if builder is None:
        print("DeepSpeed compiles no op at start-up here; nothing to build")
        return 0
    message = pending_build(builder, folder)
    print(message or f"DeepSpeed's {builder.absolute_name()} is built in {folder}", flush=True)
    builder.load()
    return 0


if __name__ == "__main__":
    sys.exit(main())
