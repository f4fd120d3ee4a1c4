"""`python -m clients.cli`: the same as the `gmbsync` console script."""

import sys

from clients.cli.main import main

sys.exit(main())
