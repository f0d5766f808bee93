"""Entry points: the `fanout` command, sample events, the embedded development Redis."""
