"""An example shop's handlers for stripe-fanout (see docs/handlers.md)."""
