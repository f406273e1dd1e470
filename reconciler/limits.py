"""Size limits on files we read, apart from the parser that enforces them, so a reader
can cap its read without importing PyYAML (``diff`` of an unchanged spec never does)."""

MAX_YAML_BYTES = 1024 * 1024  # a spec or task file: far beyond any real one
