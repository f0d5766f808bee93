"""Side-by-side benchmarks; `make bench` runs them (`python -m bench [NAME...]`). Not part of `make test`."""
