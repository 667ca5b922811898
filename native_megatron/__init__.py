"""native_megatron: native alignment pre-training for Arabic LLMs on megatron-core.

Layers, lowest first (a layer never imports a higher one):
utils -> ops -> data -> alignment, training (neither imports the other) -> convert -> evaluation -> cli;
launch (SLURM -> torchrun) stands on utils alone.
"""

__version__ = "0.1.0"
