"""``python -m experiments.denoising``: see :mod:`experiments.denoising.run`."""

import sys

from .run import main

sys.exit(main())
