"""Reading the checkpoints training writes, outside training: `merge` turns DeepSpeed's per-rank files of any
TP/PP/ZeRO layout into single-process weights (what est_megatron.hf exports and evaluation loads)."""
