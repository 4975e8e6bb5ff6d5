#!/usr/bin/env python
"""Runs est_megatron.bench.step_speed; `--help` says what it does."""
from est_megatron.bench.step_speed import main

if __name__ == "__main__":
    main()
