"""est_megatron.model"""
