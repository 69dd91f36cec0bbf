"""The package version (one place; imported by the package front, checkpoints and reports)."""

__version__ = "0.1.0"
