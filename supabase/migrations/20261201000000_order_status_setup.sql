-- Orders from sessions that moved no money get a status of their own (issue 11):
-- 'setup' for a setup-mode Checkout Session, 'no_payment_required' for one that
-- needed no payment. Re-runnable: the constraint is dropped and added again.

alter table orders drop constraint if exists orders_status_check;
alter table orders add constraint orders_status_check
    check (status in ('pending', 'paid', 'failed', 'setup', 'no_payment_required'));
