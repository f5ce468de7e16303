"""bb: a content-addressed build system for data and ML pipelines."""

__version__ = "0.1.0"

# bb's own state in a project: the stat cache, parse cache, logs (and, by
# default, the local store).
STATE_DIR = ".bb"
STAT_CACHE = "stat-cache"  # in STATE_DIR: path -> digest while the file's stat is unchanged (marshal)
