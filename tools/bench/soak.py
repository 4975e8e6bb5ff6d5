#!/usr/bin/env python
"""Runs est_megatron.bench.soak; `--help` says what it does."""
import sys

from est_megatron.bench.soak import main

if __name__ == "__main__":
    sys.exit(main())
