"""The `dtlens` command line: thin wrappers that parse, call dtlens, and print."""
