"""Tests read the real datasets from ../shared/datasets unless SPIKESSL_DATA says otherwise."""

import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("SPIKESSL_DATA", str(SHARED))
