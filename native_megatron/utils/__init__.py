"""Small helpers every layer may use: config loading, atomic I/O, logging."""
