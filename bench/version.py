"""The package version (its own module, so the store can record it without importing the public API)."""

__version__ = "0.1.0"
