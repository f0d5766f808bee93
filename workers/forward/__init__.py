"""`forward:<destination>`: deliver an event to an existing webhook endpoint, re-signed as Stripe would."""
