"""routing.yaml: matching, and every validation error named with its line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from bus.errors import ConfigError
from bus.routing import load_routing, parse_routing

from .conftest import REPO

TABLE = """\
pools:
  customer: {concurrency: 4}
  admin: {}
destinations:
  backend: {url_env: BACKEND_URL, secret_env: BACKEND_SECRET}
routes:
  customer.*: {customer: [noop]}
  customer.subscription.*: {admin: ["forward:backend"]}
  customer.subscription.deleted: {customer: [analytics.track], admin: ["forward:backend"]}
  "*": {admin: [noop]}
  charge.refunded: {admin: ["forward:backend"]}
"""


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_routing(textwrap.dedent(text), source="r.yaml")
    return str(caught.value)


def test_an_exact_name_beats_every_wildcard() -> None:
    match = parse_routing(TABLE).match("customer.subscription.deleted")
    assert match.route is not None and match.route.kind == "exact"
    assert match.targets == (("customer", ("analytics.track",)), ("admin", ("forward:backend",)))


def test_the_longest_wildcard_prefix_wins_across_dots() -> None:
    table = parse_routing(TABLE)
    assert table.match("customer.subscription.created").route.pattern == "customer.subscription.*"  # type: ignore[union-attr]
    assert table.match("customer.updated").route.pattern == "customer.*"  # type: ignore[union-attr]
    assert table.match("customer.discount.created").route.pattern == "customer.*"  # type: ignore[union-attr]


def test_the_catch_all_takes_what_nothing_else_matches() -> None:
    match = parse_routing(TABLE).match("invoice.paid")
    assert match.route is not None and match.route.kind == "catch-all" and match.pools == ("admin",)


def test_a_wildcard_does_not_match_a_type_that_only_shares_a_word_prefix() -> None:
    table = parse_routing("pools: {a: {}}\nroutes:\n  customer.*: {a: [noop]}\n")
    assert table.match("customer_balance_transaction.created").route is None
    assert table.match("customer").route is None


def test_an_unmatched_type_has_no_route_and_no_pools() -> None:
    table = parse_routing("pools: {a: {}}\nroutes:\n  charge.refunded: {a: [noop]}\n")
    assert table.match("invoice.paid").pools == ()


def test_the_version_is_a_short_hash_that_ignores_comments_and_follows_content() -> None:
    a = parse_routing(TABLE)
    b = parse_routing("# a comment\n" + TABLE)
    c = parse_routing(TABLE.replace("concurrency: 4", "concurrency: 5"))
    assert len(a.version) == 12 and a.version == b.version != c.version


def test_the_table_is_frozen() -> None:
    table = parse_routing(TABLE)
    with pytest.raises(AttributeError):
        table.version = "x"  # type: ignore[misc]


def test_pool_options_are_read_with_defaults_for_the_rest() -> None:
    pools = parse_routing(TABLE).pools
    assert pools["customer"].concurrency == 4 and pools["admin"].concurrency == 16
    assert pools["admin"].executor == "async"


def test_the_shipped_routing_file_is_valid_and_fans_checkout_out_to_both_pools() -> None:
    table = load_routing(REPO / "routing.yaml")
    assert table.warnings == ()
    assert set(table.match("checkout.session.completed").pools) == {"customer", "admin"}
    assert table.match("charge.refunded").pools == ("admin",)
    assert table.match("refund.created").pools == ("admin",)
    assert table.match("product.updated").pools == ("admin",)
    assert set(table.match("payment_intent.payment_failed").pools) >= {"admin"}
    assert table.match("customer.updated").pools == ("customer",)
    assert table.match("checkout.session.async_payment_succeeded").pools == ("customer",)
    customer = dict(table.match("checkout.session.completed").targets)["customer"]
    assert {"orders.create_from_checkout", "email.order_confirmation", "analytics.track"} <= set(customer)


# --- validation: each error names file, line and problem ---------------------------------------


def test_an_unknown_pool_is_named_with_its_line() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded:
            admn: [noop]
        """)
    assert "r.yaml:4:" in found and "unknown pool 'admn'" in found and "customer" in found


def test_an_unknown_handler_is_named_with_its_line() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded:
            customer:
              - noop
              - orders.make_it_so
        """)
    assert "r.yaml:6:" in found and "unknown handler 'orders.make_it_so'" in found


def test_forward_to_an_undeclared_destination_is_an_error() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {customer: ["forward:nowhere"]}
        """)
    assert "r.yaml:3:" in found and "unknown destination 'nowhere'" in found


def test_a_malformed_import_path_is_an_error() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {customer: ["my module:fn"]}
        """)
    assert "not a valid 'package.module:function' path" in found


@pytest.mark.parametrize("pattern", ["customer*", "*.created", "customer.*.created", "Customer.Created", "a..b", ".*"])
def test_a_malformed_wildcard_is_an_error(pattern: str) -> None:
    found = errors_of(f"""\
        pools: {{customer: {{}}}}
        routes:
          "{pattern}": {{customer: [noop]}}
        """)
    assert "r.yaml:3:" in found and "malformed route" in found


def test_a_duplicate_route_names_both_lines() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {customer: [noop]}
          charge.refunded: {customer: [profiles.upsert]}
        """)
    assert "r.yaml:4:" in found and "duplicate key 'charge.refunded'" in found and "line 3" in found


def test_a_handler_listed_twice_for_one_pool_is_an_error() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {customer: [noop, noop]}
        """)
    assert "handler 'noop' is listed twice" in found


def test_an_empty_handler_list_is_an_error() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {customer: []}
        """)
    assert "one or more handlers" in found


def test_unknown_pool_options_and_bad_values_are_errors() -> None:
    found = errors_of("""\
        pools:
          customer: {concurency: 4}
          admin: {max_attempts: 0, executor: celery, timeout_s: fast}
        routes: {}
        """)
    assert "r.yaml:2:" in found and "unknown option 'concurency'" in found
    assert "max_attempts must be positive" in found
    assert "executor must be one of async, rq" in found
    assert "timeout_s must be a number" in found


def test_a_bad_pool_name_is_an_error() -> None:
    assert "pool name 'Customer Pool'" in errors_of("pools: {'Customer Pool': {}}\nroutes: {}\n")


def test_missing_sections_are_errors() -> None:
    assert "missing 'pools'" in errors_of("routes: {}\n")
    assert "missing 'routes'" in errors_of("pools: {a: {}}\n")
    assert "unknown section 'rutes'" in errors_of("pools: {a: {}}\nroutes: {}\nrutes: {}\n")


def test_a_destination_without_its_env_names_is_an_error() -> None:
    found = errors_of("""\
        pools: {a: {}}
        destinations:
          backend: {url_env: BACKEND_URL}
          other: {url_env: lower-case, secret_env: S, retries: 3}
        routes: {}
        """)
    assert "r.yaml:3:" in found and "missing secret_env" in found
    assert "must name an environment variable" in found and "unknown option 'retries'" in found


def test_invalid_yaml_is_reported_with_its_line() -> None:
    found = errors_of("pools: {a: {}}\nroutes:\n  charge.refunded: [\n")
    assert found.startswith("r.yaml:") and "invalid YAML" in found


def test_every_error_is_reported_at_once() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          charge.refunded: {nobody: [noop]}
          refund.created: {customer: [nothing.here]}
        """)
    assert len(found.splitlines()) == 2


def test_an_empty_or_missing_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "routing.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_routing(empty)
    with pytest.raises(ConfigError, match="cannot read routing file"):
        load_routing(tmp_path / "absent.yaml")


def test_a_type_stripe_does_not_know_is_a_warning_with_the_closest_name() -> None:
    table = parse_routing("pools: {a: {}}\nroutes:\n  charge.refundd: {a: [noop]}\n", source="r.yaml")
    assert table.warnings == ("r.yaml:3: 'charge.refundd' is not a Stripe event type this SDK knows; did you mean 'charge.refunded'?",)


def test_a_wildcard_that_matches_no_stripe_type_is_a_warning() -> None:
    table = parse_routing("pools: {a: {}}\nroutes:\n  custmer.*: {a: [noop]}\n", source="r.yaml")
    assert len(table.warnings) == 1 and "did you mean 'customer.*'" in table.warnings[0]


# --- built-in handlers get only the event types they can handle ------------------------------------


def test_a_wildcard_that_would_send_profiles_upsert_non_customer_objects_is_refused() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          customer.*: {customer: [profiles.upsert, analytics.track]}
        """)
    assert "r.yaml:3:" in found and "profiles.upsert takes only customer.created" in found
    assert "customer.discount.created" in found and "customer.source.created" in found
    assert "customer.created: {customer: [profiles.upsert]}" in found, "it says what to write instead"
    assert "keep 'customer.*' for its other handlers" in found


def test_a_wildcard_narrowed_by_more_specific_routes_may_keep_profiles_upsert() -> None:
    table = parse_routing("""\
pools: {customer: {}}
routes:
  customer.*: {customer: [profiles.upsert]}
  customer.cash_balance.*: {customer: [noop]}
  customer.discount.*: {customer: [noop]}
  customer.source.*: {customer: [noop]}
  customer.subscription.*: {customer: [noop]}
  customer.tax_id.*: {customer: [noop]}
""")
    assert table.match("customer.updated").targets == (("customer", ("profiles.upsert",)),)


def test_a_built_in_routed_to_a_type_it_cannot_handle_is_refused() -> None:
    found = errors_of("""\
        pools: {customer: {}}
        routes:
          customer.subscription.created: {customer: [profiles.upsert]}
          charge.refunded: {customer: [orders.mark_paid]}
          v1.customer.created: {customer: [profiles.upsert]}
          "*": {customer: [email.order_confirmation]}
        """)
    assert "r.yaml:3:" in found and "cannot handle 'customer.subscription.created'" in found
    assert "r.yaml:4:" in found and "orders.mark_paid takes only" in found
    assert "r.yaml:5:" in found and "thin event carries a reference" in found
    assert "r.yaml:6:" in found and "email.order_confirmation takes only" in found


def test_handlers_that_take_any_type_may_sit_on_any_route() -> None:
    table = parse_routing("""\
pools: {customer: {}}
routes:
  "*": {customer: [analytics.track, noop, "mypkg.handlers:any"]}
  v2.core.account.*: {customer: [analytics.track]}
""")
    assert table.match("v2.core.account[requirements].updated").pools == ("customer",)


def test_the_shipped_routing_file_passes_the_handler_type_check() -> None:
    assert load_routing(REPO / "routing.yaml").warnings == ()


def test_skip_stale_and_ordering_are_pool_options_with_defaults() -> None:
    table = parse_routing("pools:\n  a: {skip_stale: true, ordering: object}\n  b: {}\nroutes:\n  x.y: {a: [noop]}\n")
    assert (table.pools["a"].skip_stale, table.pools["a"].ordering) == (True, "object")
    assert (table.pools["b"].skip_stale, table.pools["b"].ordering) == (False, "none")


def test_skip_stale_must_be_a_boolean_and_ordering_a_known_kind() -> None:
    errors = errors_of("""
        pools:
          a: {skip_stale: 1, ordering: fifo}
        routes:
          x.y: {a: [noop]}
        """)
    assert "r.yaml:3: pool 'a': skip_stale must be true or false, got 1" in errors
    assert "r.yaml:3: pool 'a': ordering must be one of none, object, got 'fifo'" in errors


def test_object_ordering_on_an_rq_pool_is_refused_naming_the_pool() -> None:
    errors = errors_of("""
        pools:
          slowq: {executor: rq, ordering: object}
        routes:
          x.y: {slowq: [noop]}
        """)
    assert "r.yaml:3: pool 'slowq': ordering: object needs executor: async" in errors
