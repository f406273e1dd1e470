"""Stand-in ``pueue``/``pueued`` executables for the pueue runtime's tests (see standin.py)."""
