"""Real trained models for the benchmarks: `export.py` builds them, `cases.py` lists them."""
