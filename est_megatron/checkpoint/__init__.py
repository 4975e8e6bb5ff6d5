"""The one place that knows our checkpoints on disk, for training and for every reader outside it.

`tags` names the step_N/ directories and the `latest` pointer; `state` the run state (est_state.json) and
`checksums` the manifest (checksums.json) of a training checkpoint; `durable` writes those small files atomically.
`merge` turns DeepSpeed's per-rank files of any TP/PP/ZeRO layout into single-process weights; `standalone` is our
own weights + config format (`--init-from`, tools/convert_hf_to_est.py) on `safetensors_files`; `reader` loads
either kind, verifying a training checkpoint's checksums first; `tokenizer` finds the tokenizer a checkpoint
carries. Saving through the DeepSpeed engine stays in est_megatron.training.checkpoint.
"""
