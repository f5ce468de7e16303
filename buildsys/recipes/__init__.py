"""Recipes that are not shell text: notebooks (and, next, Python functions).
Each runs as a command line (`python -m buildsys.recipes.<kind> ...`), so
local runs, the sandbox and remote workers run them like any recipe."""
