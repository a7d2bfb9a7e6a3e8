"""Bridges between agentfast and other libraries.

Nothing is imported here: each integration is a subpackage that pulls in its library only
when it is imported itself (``import agentfast.integrations.transformers``).
"""
