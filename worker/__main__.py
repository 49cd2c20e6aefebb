"""`python -m worker` is the `governor` command."""

import sys

from worker.ops.cli import main

sys.exit(main())
