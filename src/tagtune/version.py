"""tagtune's version, one place for the package, the Hub's user agent and the commands."""

__version__ = "0.1.0"
"""This package's version, a PEP 440 string: the one pyproject.toml releases it under."""
