"""One training loop for every stage and method; checkpoint and resume."""
