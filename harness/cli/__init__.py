"""The klp-harness command: a thin layer, one module per subcommand, over the library."""
