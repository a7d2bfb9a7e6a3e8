"""``python -m agentfast`` (and ``torchrun -m agentfast train ...``) run the CLI."""

import sys

from .cli import main

sys.exit(main())
