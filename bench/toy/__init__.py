"""The embedded toy suite: a procedural 32x32 world, a tiny StableDiffusionPipeline
trained on it, proxy rewards and gold rewards. See bench/toy/assets/README.md."""
