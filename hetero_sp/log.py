"""One module logger with a rank prefix. Filter ranks with torchrun's --local-ranks-filter."""

from __future__ import annotations

import logging
import os
import sys

_FORMAT = "%(asctime)s [rank{rank}] %(levelname)s %(name)s: %(message)s"


def get_logger(name: str = "hetero_sp") -> logging.Logger:
    logger = logging.getLogger(name)
    root = logging.getLogger("hetero_sp")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(_FORMAT.format(rank=os.environ.get("RANK", "0")), "%H:%M:%S")
        )
        root.addHandler(handler)
        root.setLevel(os.environ.get("HETERO_SP_LOG_LEVEL", "INFO"))
        root.propagate = False
    return logger
