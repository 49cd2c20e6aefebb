"""`python -m worker` is the `governor` command."""

import sys

from worker.cli import main

sys.exit(main())
