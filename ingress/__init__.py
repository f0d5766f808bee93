"""The thin HTTP edge: verify, parse the routing fields, route, publish. Nothing else."""
