"""The built-in customer domain: orders, profiles, analytics and the confirmation email (handlers),
where they are kept (store: Supabase or SQLite) and how mail goes out (mail). The engine knows
nothing of it; routing.yaml names its handlers by short name (bus/handler_names.py)."""
