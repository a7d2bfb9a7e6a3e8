"""The package version (one place; ``agentfast.__version__`` and saved policies read it)."""

__version__ = "0.1.0"
