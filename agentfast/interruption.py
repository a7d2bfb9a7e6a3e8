"""Named points where a test can hold the process, to kill it there.

A kill at any moment must lose nothing: a resumed run ends with the weights of a run that
was never interrupted, a killed write leaves the old file. Proving that needs kills at exact
places (mid-step, mid-checkpoint write, mid-file), not wherever a timer happens to fire, so
the code names its places with ``pause_point("step-6-backward")``. With ``AGENTFAST_PAUSE_AT`` set to a comma-separated list
of such names, a process reaching one writes its name to the file ``AGENTFAST_PAUSE_FILE``
and waits there until it is killed (or, after ten minutes, exits with status 75). Unset, as
always outside such tests, a pause point costs one environment lookup.

Names: ``step-N-backward`` (gradients of step N computed, the optimiser not yet stepped),
``checkpoint-N-weights`` (the weights of checkpoint N written to its staging folder, the
trainer state not yet), ``checkpoint-N-renamed`` (checkpoint N in place, ``latest`` not yet
moved to it), ``write-NAME`` (every byte of the file NAME written to its temporary file,
not yet renamed over NAME: ``agentfast.atomic_files``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT_ENV = "AGENTFAST_PAUSE_AT"
PAUSE_FILE_ENV = "AGENTFAST_PAUSE_FILE"
WAIT_SECONDS = 600
EXIT_UNKILLED = 75


def pause_point(name: str) -> None:
    """Wait here to be killed if ``AGENTFAST_PAUSE_AT`` names ``name`` (see module docstring)."""
    wanted = os.environ.get(PAUSE_AT_ENV)
    if not wanted or name not in wanted.split(","):
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(name + "\n", encoding="utf-8")
    time.sleep(WAIT_SECONDS)
    os._exit(EXIT_UNKILLED)  # nobody came: end without running any cleanup, as a kill would
