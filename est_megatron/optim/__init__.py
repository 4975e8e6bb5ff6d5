"""est_megatron.optim: the sparse AdamW that updates only what a step's subnetwork trained.

`sparse_adamw` is the optimizer; `param_state` what it keeps per parameter; `hyper` AdamW's hyperparameters and
bias corrections; `torch_routes` and `selected_adamw` (Triton, with its C twin `selected_adamw_c`) the ways an update
runs; `partitions` where DeepSpeed keeps each parameter's fp32 elements. Nothing here knows the training loop, so
benchmarks and tests drive the optimizer on plain parameters too.
"""
