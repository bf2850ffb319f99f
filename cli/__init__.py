"""The ``dlrun`` command line (click)."""
