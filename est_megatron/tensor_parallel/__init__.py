"""est_megatron.tensor_parallel: what the model's layers need to run split across tensor-parallel ranks.

Communication hooks (`mappings`), the vocab-parallel embedding and loss (`vocab_parallel`), the rules that split
and join each parameter (`sharding`), the plan localised to a TP rank (`plan_localization`) and the layout checks
(`layout`). Below `model`: nothing here imports the model, DeepSpeed or the training loop.
"""
