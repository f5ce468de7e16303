"""The Batchfile language: grammar, parser, model objects, settings, and the expanded graph."""
