"""`python -m netctl` is the `netctl` command."""

import sys

from .cli import main

sys.exit(main())
