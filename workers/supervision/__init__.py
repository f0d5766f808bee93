"""Process supervision: one pool consumer per process (runner.py), N of them and RQ workers (supervisor.py)."""
