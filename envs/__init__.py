"""Task environments: problems + prompt text + which verifier checks them."""

from .base import Environment, EnvError, Problem
from .registry import load_env

__all__ = ["Environment", "EnvError", "Problem", "load_env"]
