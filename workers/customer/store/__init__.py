"""Where the customer pool keeps its rows: Supabase when configured, else a local SQLite file."""
