#!/usr/bin/env python
"""Runs est_megatron.bench.preprocess_bench; `--help` says what it does."""
from est_megatron.bench.preprocess_bench import main

if __name__ == "__main__":
    main()
