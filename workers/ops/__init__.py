"""Operator-facing data functions: dead letters (list, replay), replay, status. The CLI prints them."""
