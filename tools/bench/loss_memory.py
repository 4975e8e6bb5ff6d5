#!/usr/bin/env python
"""Runs est_megatron.bench.loss_memory; `--help` says what it does."""
import sys

from est_megatron.bench.loss_memory import main

if __name__ == "__main__":
    sys.exit(main())
