"""Customer email: rendering, the outbox claim, and the SMTP or local-file transport."""
