#!/usr/bin/env python
"""Runs est_megatron.cli.memory_plan (installed: `est-memory-plan`); `--help` says what it does."""
import sys

from est_megatron.cli.memory_plan import main

if __name__ == "__main__":
    sys.exit(main())
