"""Worker pools: consume a pool stream, run handlers, retry, dead-letter."""
