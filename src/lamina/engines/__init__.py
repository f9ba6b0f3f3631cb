"""Storage engines: ``btree`` (copy-on-write B+tree pages) and ``archive`` (append-only rows).

Engines import only from :mod:`lamina.core` and :mod:`lamina.errors`; the layers above
(database facade, backup, CLI) import from here.
"""
