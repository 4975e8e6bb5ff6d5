"""est_megatron.training"""
