"""maskcd."""
