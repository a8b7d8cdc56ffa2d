"""``python -m spikessl`` (what ``torchrun -m spikessl`` runs)."""

import sys

from spikessl.cli import main

sys.exit(main())
