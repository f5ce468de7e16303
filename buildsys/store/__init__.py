"""Stores: the Store protocol and result types, the local store, S3, the tiered pair, and garbage collection."""
