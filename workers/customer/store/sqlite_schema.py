"""The embedded store's tables (workers/customer/store/sqlite_store.py): supabase/migrations in SQLite terms."""

ORDER_STATUSES = ("pending", "paid", "failed", "setup", "no_payment_required")

ORDERS_TABLE = """
create table if not exists {name} (
    checkout_session_id text primary key,
    payment_intent_id   text,
    customer_id         text,
    customer_email      text,
    customer_name       text,
    amount_subtotal     integer,
    amount_total        integer,
    amount_shipping     integer,
    currency            text,
    payment_status      text    not null,
    status              text    not null check (status in ({statuses})),
    failure_reason      text,
    shipping            text,
    metadata            text    not null default '{{}}',
    livemode            integer not null default 0,
    last_event_id       text    not null,
    last_event_created  integer not null,
    created_at          text    not null,
    updated_at          text    not null
);
"""

SCHEMA = ORDERS_TABLE.format(name="orders", statuses=", ".join(f"'{s}'" for s in ORDER_STATUSES)) + """
create unique index if not exists orders_payment_intent_id_key
    on orders (payment_intent_id) where payment_intent_id is not null;
create table if not exists customers (
    id                  text primary key,
    email               text,
    name                text,
    phone               text,
    address             text,
    metadata            text    not null default '{}',
    deleted             integer not null default 0,
    livemode            integer not null default 0,
    last_event_id       text    not null,
    last_event_created  integer not null,
    created_at          text    not null,
    updated_at          text    not null
);
create table if not exists customer_events (
    id             integer primary key autoincrement,
    event_id       text    not null,
    kind           text    not null,
    event_type     text    not null,
    customer_id    text,
    object_id      text,
    amount         integer,
    currency       text,
    event_created  integer not null,
    properties     text    not null default '{}',
    recorded_at    text    not null,
    unique (event_id, kind)
);
create table if not exists email_outbox (
    id           integer primary key autoincrement,
    event_id     text    not null,
    template     text    not null,
    recipient    text    not null,
    order_id     text,
    status       text    not null default 'pending'
                 check (status in ('pending', 'sending', 'sent', 'failed')),
    attempts     integer not null default 0,
    claim_token  text,
    claimed_at   text,
    sent_at      text,
    last_error   text,
    created_at   text    not null,
    unique (event_id, template)
);
"""
