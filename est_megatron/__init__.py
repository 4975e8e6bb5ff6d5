"""est_megatron: Evolving Subnetwork Training (EST), RAPTR and SAT on DeepSpeed."""

__version__ = "0.1.0"
