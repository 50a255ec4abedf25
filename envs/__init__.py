"""Task environments: problems + prompt text + which verifier checks them."""

from .base import EnvError, Environment, Problem
from .registry import load_env

__all__ = ["Environment", "EnvError", "Problem", "load_env"]
