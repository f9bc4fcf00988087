"""Analysis tools."""
from . import superposition

__all__ = ["superposition"]
