#!/usr/bin/env python
"""Runs est_megatron.bench.memory; `--help` says what it does."""
import sys

from est_megatron.bench.memory import main

if __name__ == "__main__":
    sys.exit(main())
