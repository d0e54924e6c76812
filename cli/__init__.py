"""The ``splitasr`` command line."""
