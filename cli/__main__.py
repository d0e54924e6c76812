"""``python -m splitasr.cli``."""

import sys

from splitasr.cli.main import main

sys.exit(main())
