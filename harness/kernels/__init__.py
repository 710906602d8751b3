"""Kernels: parse a spec, resolve it against Debian or build it from linux-source, fetch and cache
it, recover its kallsyms. Gives a Kernel."""
