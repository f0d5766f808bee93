"""Reading routing.yaml safely: bounded in size, decoded, composed; every failure a ConfigError.

Whatever the file holds (a directory, binary bytes, a tag, thousands of nested brackets),
what comes out is a YAML node tree or a ConfigError naming the file and, when there is
one, the line: never another exception, so neither a reload watcher nor `routes check`
can be ended by a bad edit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import yaml

from bus.errors import ConfigError

# libyaml composes a routing file ~8x faster than pure Python, and caps nesting depth itself.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_routing_text(path: Path, max_bytes: int) -> str:
    """The file's text. A file over `max_bytes` is refused from its size, before a byte is read:
    parsing and validating tens of MB would cost minutes of CPU and gigabytes in every process."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a directory, or a FIFO open() would wait on
            raise ConfigError(f"{path}: cannot read routing file: it is not a regular file")
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                raise ConfigError(f"{path}: the routing file is {size} bytes, over the limit of "
                                  f"{max_bytes} bytes (MAX_ROUTING_FILE_BYTES)")
            # One byte more than allowed: a file that grew since, is still bounded and refused.
            data = file.read(max_bytes + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read routing file: {err.strerror or err}") from err
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: the routing file is over the limit of {max_bytes} bytes "
                          "(MAX_ROUTING_FILE_BYTES)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the routing file is not UTF-8 text "
                          f"(byte 0x{data[err.start]:02x} at offset {err.start})") from err
    return text


def compose_yaml(text: str, source: str) -> yaml.Node | None:
    """The node tree of a YAML document (None when empty); nothing is constructed yet."""
    try:
        node: yaml.Node | None = yaml.compose(text, Loader=LOADER)
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}:{_error_line(err, text)}: invalid YAML: {_reason(err)}") from err
    except RecursionError as err:  # PyYAML composes recursively: thousands of nested [ or {
        raise ConfigError(f"{source}:1: invalid YAML: nested too deeply") from err
    return node


def _error_line(err: yaml.YAMLError, text: str) -> int:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if mark is not None:
        return int(mark.line) + 1
    position = getattr(err, "position", None)  # ReaderError: a character YAML does not allow
    return text.count("\n", 0, position) + 1 if isinstance(position, int) else 1


def _reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.reader.ReaderError):
        char = chr(err.character) if isinstance(err.character, int) else err.character  # libyaml: a code point
        return f"character {char!r} is not allowed in YAML"
    return str(getattr(err, "problem", None) or err)
