"""Triton kernels of rnnofrnns, installed as rnnofrnns.kernels."""
