"""torchrun, ending without a traceback of its own on SIGINT (Ctrl-C) or SIGTERM (SLURM).

torchrun passes such a signal on to its workers, waits for them to exit, then raises
``SignalException`` out of its main function, whose traceback ends every interrupted run. The
workers of ``hetero_sp.train`` stop after their step and rank 0 says how to resume
(``hetero_sp/engine/interrupt.py``), so that traceback says nothing: this wrapper leaves it out
and exits with status 128 + the signal number, as a shell reports a process a signal ended.
Everything else (arguments, restarts, failures and their summary) is torchrun's own.

    python launch/torchrun.py --nproc-per-node 2 -m hetero_sp.train --config FILE
"""

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.run import main as torchrun_main


def main() -> int:
    try:
        torchrun_main()
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
