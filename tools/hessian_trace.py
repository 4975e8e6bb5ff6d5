#!/usr/bin/env python
"""Runs est_megatron.cli.hessian_trace (installed: `est-hessian-trace`); `--help` says what it does."""
import sys

from est_megatron.cli.hessian_trace import main

if __name__ == "__main__":
    sys.exit(main())
