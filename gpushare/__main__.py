"""`python -m gpushare` is the same as the `gpushare` command."""

import sys

from gpushare.cli import main

sys.exit(main())
