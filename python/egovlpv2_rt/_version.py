"""The package version (read by the build from this file; see pyproject.toml)."""

__version__ = "0.1.0"
