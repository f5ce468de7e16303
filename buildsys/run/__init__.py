"""Running: the scheduler, the executors behind their protocol, and moving outputs between store and workspace."""
