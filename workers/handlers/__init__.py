"""Built-in handlers, named in routing.yaml by short name (see bus/handler_names.py)."""
