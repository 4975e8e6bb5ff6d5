"""est_megatron.planning: what a training run will need before it runs (per-rank memory), from the model's shape.

Training never imports it; the planner reads the DeepSpeed settings training resolves, so it sits above training.
"""
