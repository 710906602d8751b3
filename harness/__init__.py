"""klp-harness: turn references to unexported kernel symbols into klp relocations, and prove it."""

__version__ = "0.1.0"
