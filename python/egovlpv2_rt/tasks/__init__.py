"""Downstream tasks of EgoVLPv2: dataset readers, samplers, losses and evaluation per task."""
