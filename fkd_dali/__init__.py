"""fkd-dali: Fast Knowledge Distillation (FKD) on NVIDIA DALI.

A teacher labels many random crops of every image once; the crop boxes, flips and
top-K probabilities live in a Zarr soft-label store; training replays those crops
through a DALI pipeline into a plain PyTorch DDP loop.
"""
__version__ = "0.1.0"
