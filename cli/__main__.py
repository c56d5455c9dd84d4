"""``python -m cli ...``: the same as the ``rt-decoder`` console script."""

import sys

from cli.main import main

sys.exit(main())
