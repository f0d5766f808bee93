"""Whatever a routing file holds, loading it ends in a table or a ConfigError naming file and line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from bus import defaults, routing_file
from bus.errors import ConfigError
from bus.routing import load_routing, parse_routing
from fanout.cli import main

GOOD = "pools:\n  customer: {concurrency: 4}\nroutes:\n  charge.refunded: {customer: [noop]}\n"


def _write(text: str | bytes) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / "routing.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path
    return make


def _directory(tmp: Path) -> Path:
    (tmp / "routing.yaml").mkdir()
    return tmp / "routing.yaml"


def _oversized(tmp: Path) -> Path:
    path = tmp / "routing.yaml"
    with path.open("wb") as file:  # sparse: 50 MB in size, nothing written
        file.truncate(50 * 1024 * 1024)
    return path


# (how to make the file, what the error must say, its line or None when it has none)
BAD_FILES = {
    "python_object_tag": (_write(GOOD.replace("concurrency: 4", "concurrency: !!python/object:os.getcwd 4")),
                          "unsupported YAML tag 'tag:yaml.org,2002:python/object:os.getcwd'", 2),
    "int_tag_on_a_word": (_write(GOOD.replace("concurrency: 4", "concurrency: !!int eight")),
                          "concurrency: cannot read 'eight' as int", 2),
    "one_non_utf8_byte": (_write(GOOD.encode().replace(b"noop", b"no\xffop")),
                          "is not UTF-8 text (byte 0xff at offset", 4),
    "binary_file": (_write(bytes(range(256)) * 4), "not UTF-8 text (byte 0x80 at offset 128)", 2),
    "control_character": (_write(GOOD + "  refund.created: {customer: [a\x07b]}\n"),
                          "character '\\x07' is not allowed in YAML", 5),
    "deep_nesting": (_write("pools: " + "[" * 100_000), "invalid YAML", 1),
    "a_directory": (_directory, "it is not a regular file", None),
    "a_missing_file": (lambda tmp: tmp / "nope.yaml", "cannot read routing file: No such file", None),
    "over_the_size_limit": (_oversized, f"52428800 bytes, over the limit of {defaults.MAX_ROUTING_FILE_BYTES}", None),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_a_bad_routing_file_is_a_config_error_naming_file_and_line(case: str, tmp_path: Path) -> None:
    make, message, line = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_routing(path)
    error = str(caught.value)
    assert message in error
    assert error.startswith(f"{path}:{line}: " if line else f"{path}: ")


@pytest.mark.parametrize("case", BAD_FILES)
def test_routes_check_reports_a_bad_file_without_a_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message, _ = BAD_FILES[case]
    path = make(tmp_path)
    assert main(["routes", "check", str(path)]) == 1  # an exception here would be the traceback
    out = capsys.readouterr()
    assert message in out.err and "Traceback" not in out.err + out.out


def test_deep_nesting_is_a_config_error_with_the_pure_python_parser_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing_file, "LOADER", yaml.SafeLoader)  # no libyaml: composes recursively
    with pytest.raises(ConfigError, match=r"r\.yaml:1: invalid YAML: nested too deeply"):
        parse_routing("pools: " + "[" * 100_000, source="r.yaml")


def test_the_size_limit_is_configurable(tmp_path: Path) -> None:
    path = _write(GOOD)(tmp_path)
    with pytest.raises(ConfigError, match="over the limit of 10 bytes"):
        load_routing(path, max_bytes=10)
    assert load_routing(path, max_bytes=len(GOOD)).pools


def test_only_the_first_unknown_types_get_a_closest_name_hint() -> None:
    # difflib costs milliseconds per name: thousands of unknown types once cost minutes.
    routes = "".join(f"  customer.thing{i}.updated: {{customer: [noop]}}\n" for i in range(100))
    table = parse_routing("pools:\n  customer: {}\nroutes:\n" + routes)
    assert len(table.warnings) == 100
    hinted = [w for w in table.warnings if "did you mean" in w]
    assert len(hinted) == defaults.MAX_EVENT_TYPE_HINTS
    assert all("did you mean" in w for w in table.warnings[: defaults.MAX_EVENT_TYPE_HINTS])


def test_a_closest_name_hint_still_names_a_near_miss() -> None:
    table = parse_routing("pools:\n  customer: {}\nroutes:\n  charge.refundd: {customer: [noop]}\n")
    assert "did you mean 'charge.refunded'?" in table.warnings[0]
