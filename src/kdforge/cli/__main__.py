"""``python -m kdforge.cli`` (what ``torchrun -m kdforge.cli`` runs)."""

import sys

from kdforge.cli import main

sys.exit(main())
