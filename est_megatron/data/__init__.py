"""est_megatron.data"""
