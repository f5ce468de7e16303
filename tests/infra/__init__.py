"""Test infrastructure for remote (Batch) execution: the job base image
(base_image.py), a loopback registry (registry.py), moto_server with a Batch
queue (moto.py) and the pytest fixtures over them (fixtures.py). Each module
but fixtures.py is also a command; see README, "Running the remote tests by hand"."""
