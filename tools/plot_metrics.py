#!/usr/bin/env python
"""Runs est_megatron.cli.plot_metrics (installed: `est-plot-metrics`); `--help` says what it does."""
from est_megatron.cli.plot_metrics import main

if __name__ == "__main__":
    main()
