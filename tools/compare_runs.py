#!/usr/bin/env python
"""Runs est_megatron.cli.compare_runs (installed: `est-compare-runs`); `--help` says what it does."""
from est_megatron.cli.compare_runs import main

if __name__ == "__main__":
    main()
