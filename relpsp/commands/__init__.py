"""One module per ``relpsp`` command: ``configure(parser)`` and ``run(args) -> int``."""
