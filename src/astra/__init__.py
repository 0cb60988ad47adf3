"""Astra: a reproduction framework for LoRA initialisation methods."""

__version__ = "0.1.0"
