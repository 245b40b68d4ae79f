"""vitopt plugin 'lowrank': low-rank factorisation of a ViT's MLP layers (entry point:
vitopt_lowrank.plugin)."""
