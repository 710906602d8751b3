"""The converter, usable alone: read a module ELF, turn references to unexported symbols into klp
relocations, write it back, inspect the result. Imports nothing from the rest of harness but
errors."""
