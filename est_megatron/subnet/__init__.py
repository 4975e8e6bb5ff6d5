"""est_megatron.subnet"""
