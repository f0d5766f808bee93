"""Built-in handlers of the customer pool, named in routing.yaml by short name (see bus/handler_names.py)."""
