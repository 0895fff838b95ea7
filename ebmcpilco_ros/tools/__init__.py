"""Tools: users of the package's layers (simulators, benches), never used by those layers."""
