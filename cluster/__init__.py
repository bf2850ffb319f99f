"""Distributed training on Ray (data-parallel SGD with parameter averaging): coming."""
