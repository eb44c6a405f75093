"""Shared test set-up: stable notebook output, single-threaded torch in the test process."""

import os

os.environ.setdefault("IPP_NONINTERACTIVE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# OpenMP threads that spin while waiting for a core make a shared 2-core machine crawl (20-60x measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
