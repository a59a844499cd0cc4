"""The package version (one place; the root package and file metadata read it)."""

__version__ = "0.1.0"
