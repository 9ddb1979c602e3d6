"""tagtune's version, one place for the package, the Hub's user agent and the commands."""

__version__ = "0.1.0"
