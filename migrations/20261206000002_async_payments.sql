-- Asynchronous payment methods. REQUIRES_ACTION: the provider waits for the customer (3-D Secure); PROCESSING: the
-- provider settles later (a bank debit). In both the order stays RESERVED and its pay step waits, its next job
-- scheduled at the deadline, holding no worker; the provider's webhook wakes it sooner (`provider_event`).
alter table payments drop constraint payments_status_valid;
alter table payments add constraint payments_status_valid
    check (status in ('PENDING', 'REQUIRES_ACTION', 'PROCESSING', 'AUTHORIZED', 'PARTIALLY_CAPTURED', 'CAPTURED',
                      'DECLINED', 'VOIDED', 'REFUNDED'));
