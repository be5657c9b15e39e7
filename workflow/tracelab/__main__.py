"""`python -m tracelab`: the same as the `tracelab` command."""

import sys

from tracelab.cli import main

sys.exit(main())
