"""The agentfast test suite: a package, so its shared helpers import as ``tests.<module>``."""
