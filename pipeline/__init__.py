"""DiffRatio pipeline library: importable, no I/O or heavy work at import time."""
