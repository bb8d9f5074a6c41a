import os
import sys

# MKL may otherwise use fewer threads than asked when the machine is busy, which changes how its
# sums split and so the last bits of a result; set before torch is imported.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from bench.cli import main  # noqa: E402

sys.exit(main())
