"""est_megatron.bench: the benchmarks, each a `main(argv=None)` that tools/bench/<name>.py runs.

Speed and memory targets are checked here, by ratios measured side by side in one run (step speed against dense,
a whole compressed schedule, SAT's importance pre-pass, preprocessing throughput, peak memory against the
planner), and the launchers' behaviour by the soak (exits, hangs, orphans over every layout). Training never
imports this package.
"""
