"""Triton kernels of agentfast, installed as ``agentfast.kernels``."""
