#!/usr/bin/env python
"""Runs est_megatron.bench.sat_importance; `--help` says what it does."""
from est_megatron.bench.sat_importance import main

if __name__ == "__main__":
    main()
