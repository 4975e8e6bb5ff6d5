"""est_megatron.analysis: reading training logs (`metrics.jsonl`) back and drawing loss curves from them.

`curves` turns a log into loss series against steps, FLOPs and tokens (no plotting library needed);
`figure` draws the paper's Figure 2 layout with matplotlib, an optional dependency (`pip install -e ".[plot]"`).
`comparison` pairs runs seed by seed against a baseline (means and deviations, relative difference, FLOPs saved),
`lr_sweep` picks a run's peak rate on validation loss for test-loss reporting, `equal_flops` sizes a dense run to
an EST-family run's FLOPs, and `report` writes the summary.json, table.md and figure2.png; tools/compare_runs.py and
tools/plot_metrics.py draw through these modules.
"""
