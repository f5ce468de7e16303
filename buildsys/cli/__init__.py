"""The bb command: argument parsing, the fast no-op path, cache commands, and terminal output."""
