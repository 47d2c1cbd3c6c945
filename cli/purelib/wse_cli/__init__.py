"""The ``wse`` command line."""
