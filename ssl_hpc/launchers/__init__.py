"""Backends that execute a sweep's jobs: local (this machine), slurm (submitit), ray."""
