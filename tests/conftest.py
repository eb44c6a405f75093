"""Shared test set-up: stable notebook output, single-threaded torch in the test process."""

import os

os.environ.setdefault("IPP_NONINTERACTIVE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
