"""bench: a harness that benchmarks reward fine-tuning of text-to-image diffusion
models and measures reward overoptimization.

Importing this package is cheap: heavy libraries (torch, diffusers, transformers)
are imported lazily by the modules that need them, so `python -m bench list` and
input validation stay instant.
"""

__version__ = "0.1.0"
