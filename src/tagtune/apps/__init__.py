"""The commands: the command line and one module per command (predict, serve, annotate, select,
info, demo), with what they share in modules of its own (_http, _pool). Commands never import
each other."""
