"""Module builds for a Kernel: the toolchain (host or a Debian build root), kbuild, conversion,
signing. Gives BuiltModules."""
