-- Customer pool tables for stripe-fanout (issue 4).
--
-- Every key is enforced by a constraint, so a handler run twice, or two
-- workers racing on one event, cannot create a second row. Names are not
-- schema-qualified: the tables land in the first schema on search_path
-- (`public` on Supabase), which lets the tests apply this file to a private
-- schema.
--
-- *_event_created columns hold the Stripe event's `created` (Unix seconds) of
-- the last event applied; handlers compare it so a late event never
-- overwrites a newer one.

create table if not exists orders (
    checkout_session_id text primary key,
    payment_intent_id   text,
    customer_id         text,
    customer_email      text,
    customer_name       text,
    amount_subtotal     bigint,
    amount_total        bigint,
    amount_shipping     bigint,
    currency            text,
    payment_status      text        not null,
    status              text        not null check (status in ('pending', 'paid', 'failed')),
    failure_reason      text,
    shipping            jsonb,
    metadata            jsonb       not null default '{}'::jsonb,
    livemode            boolean     not null default false,
    last_event_id       text        not null,
    last_event_created  bigint      not null,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

-- One order per payment intent; sessions without one (yet) are allowed.
create unique index if not exists orders_payment_intent_id_key
    on orders (payment_intent_id) where payment_intent_id is not null;
create index if not exists orders_customer_id_idx on orders (customer_id);

create table if not exists customers (
    id                  text primary key,
    email               text,
    name                text,
    phone               text,
    address             jsonb,
    metadata            jsonb       not null default '{}'::jsonb,
    deleted             boolean     not null default false,
    livemode            boolean     not null default false,
    last_event_id       text        not null,
    last_event_created  bigint      not null,
    created_at          timestamptz not null default now(),
    updated_at          timestamptz not null default now()
);

create table if not exists customer_events (
    id             bigint generated always as identity primary key,
    event_id       text        not null,
    kind           text        not null,
    event_type     text        not null,
    customer_id    text,
    object_id      text,
    amount         bigint,
    currency       text,
    event_created  bigint      not null,
    properties     jsonb       not null default '{}'::jsonb,
    recorded_at    timestamptz not null default now(),
    constraint customer_events_event_kind_key unique (event_id, kind)
);
create index if not exists customer_events_customer_id_idx on customer_events (customer_id);

create table if not exists email_outbox (
    id           bigint generated always as identity primary key,
    event_id     text        not null,
    template     text        not null,
    recipient    text        not null,
    order_id     text,
    status       text        not null default 'pending'
                 check (status in ('pending', 'sending', 'sent', 'failed')),
    attempts     integer     not null default 0,
    claim_token  text,
    claimed_at   timestamptz,
    sent_at      timestamptz,
    last_error   text,
    created_at   timestamptz not null default now(),
    constraint email_outbox_event_template_key unique (event_id, template)
);

-- The workers use the service role, which bypasses row level security; with
-- RLS on and no policies, the anon and authenticated keys see nothing.
alter table orders enable row level security;
alter table customers enable row level security;
alter table customer_events enable row level security;
alter table email_outbox enable row level security;
