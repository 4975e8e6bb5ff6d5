"""est_megatron.parallel"""
