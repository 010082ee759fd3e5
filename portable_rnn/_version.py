"""The package's version: one source, read by the build (``pyproject.toml``) and by the code."""

__version__ = "0.1.0"
