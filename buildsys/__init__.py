"""bb: a content-addressed build system for data and ML pipelines."""

__version__ = "0.1.0"
