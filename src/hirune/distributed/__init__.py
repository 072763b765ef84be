"""Training on many processes with PyTorch's own engine (torch.distributed, torchrun).

    plan.py    per-GPU memory and communication of ddp / zero1 / zero2 / zero3 (`hirune plan`)
"""
