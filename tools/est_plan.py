#!/usr/bin/env python
"""Runs est_megatron.cli.est_plan (installed: `est-plan`); `--help` says what it does."""
from est_megatron.cli.est_plan import main

if __name__ == "__main__":
    main()
