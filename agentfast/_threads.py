"""How many CPU threads torch gets for embedding text when nobody says.

Each of torch's threads waits for the slowest at every operation, so a thread on a core that
other work also wants slows all of them down: on the 2-core development machine, shared with
other jobs, the default encoder embedded 2.6x more texts per second with one thread than with
two (README, "Measured"). Half the CPUs leaves room for the rest of the machine's work and is
one thread on such a machine.
"""

from __future__ import annotations

import os


def default_threads() -> int:
    """Half the CPUs this process may run on, at least one (1 on a 2-core machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // 2)
