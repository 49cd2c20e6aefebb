"""`python -m worker.bench`: the benchmark's children and its driver."""

import sys

from worker.bench import _child_main

sys.exit(_child_main())
