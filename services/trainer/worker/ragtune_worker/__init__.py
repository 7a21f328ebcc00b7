"""ragtune trainer worker: the compute half of the trainer service."""
