"""Task families: how each benchmark's rows are read, formatted and scored (math, code, commonsense)."""
