"""``python -m egovlpv2_rt.cli ...`` (e.g. under ``torchrun``) runs the ``egovlpv2`` CLI."""

import sys

from . import main

sys.exit(main())
