"""The ``lamina`` command: one module per command, registered in :mod:`lamina.cli.main`."""
