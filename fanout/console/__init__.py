"""`fanout console`: the operator's console (server-rendered pages on Starlette)."""
