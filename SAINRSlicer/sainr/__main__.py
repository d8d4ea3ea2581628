"""``python -m sainr`` = the ``sainr`` console script (used by the Slicer module's subprocess)."""

import sys

from .cli import main

sys.exit(main())
