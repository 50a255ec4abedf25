"""Task environments: problems + prompt text + which verifier checks them."""

from .base import Environment, Problem
from .registry import EnvError, load_env

__all__ = ["Environment", "EnvError", "Problem", "load_env"]
