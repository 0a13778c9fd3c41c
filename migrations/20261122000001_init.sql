-- billing-outbox schema: bills, their items, the transactional outbox and delivery history.

-- Bills. Recipient data is stored only as AES-256-GCM ciphertext in the text form
-- `<key id>:<base64(nonce|ciphertext|tag)>`, bound to the bill id and field name.
CREATE TABLE bills (
    id               uuid        PRIMARY KEY,
    idempotency_key  text        UNIQUE,
    request_hash     bytea,
    external_id      text,
    recipient_name   text        NOT NULL,
    recipient_email  text        NOT NULL,
    recipient_phone  text        NOT NULL,
    billing_period   text        NOT NULL,
    due_date         date        NOT NULL,
    currency         text        NOT NULL,
    total_minor      bigint      NOT NULL,
    status           text        NOT NULL DEFAULT 'PENDING'
                                 CHECK (status IN ('PENDING', 'SENDING', 'SENT', 'DEAD')),
    channel          text        NOT NULL DEFAULT 'email' CHECK (channel IN ('email', 'sms')),
    -- send attempts since the last replay, over all channels
    attempts         integer     NOT NULL DEFAULT 0,
    -- leases that expired on the current channel (the sweeper's cap)
    lease_expiries   integer     NOT NULL DEFAULT 0,
    claim_token      uuid,
    lease_until      timestamptz,
    replay_count     integer     NOT NULL DEFAULT 0,
    last_error       text,
    traceparent      text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    dead_at          timestamptz
);

-- GET /v1/bills?status=...&cursor=... (keyset on id; ids are UUIDv7, so time-ordered)
CREATE INDEX bills_status_id ON bills (status, id);
-- the sweeper: SENDING rows whose lease expired
CREATE INDEX bills_sending_lease ON bills (lease_until) WHERE status = 'SENDING';
-- the admin dead-letter list
CREATE INDEX bills_dead ON bills (dead_at, id) WHERE status = 'DEAD';

CREATE TABLE bill_items (
    bill_id      uuid     NOT NULL REFERENCES bills (id) ON DELETE CASCADE,
    position     smallint NOT NULL,
    name         text     NOT NULL,
    amount_minor bigint   NOT NULL,
    PRIMARY KEY (bill_id, position)
);

-- The transactional outbox. Column names `id`, `aggregatetype`, `aggregateid`, `type` and
-- `payload` follow Debezium's outbox event router, so CDC can replace the polling relay.
CREATE TABLE outbox (
    id               uuid        PRIMARY KEY,
    -- commit-independent total order used by the relay for per-aggregate ordering
    seq              bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    aggregatetype    text        NOT NULL,
    aggregateid      text        NOT NULL,
    type             text        NOT NULL,
    payload          jsonb       NOT NULL,
    topic            text        NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    publish_attempts integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text
);

-- the relay's claim: oldest unpublished rows first
CREATE INDEX outbox_unpublished ON outbox (seq) INCLUDE (aggregateid) WHERE published_at IS NULL;
-- the relay's ordering check: is there an earlier unpublished row of this aggregate?
CREATE INDEX outbox_unpublished_aggregate ON outbox (aggregateid, seq) WHERE published_at IS NULL;
-- retention: published rows by age
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays when rows arrive. One notification per statement; Postgres folds identical
-- notifications of one transaction into one.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_inserted', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Every delivery attempt, whatever its outcome.
CREATE TABLE delivery_attempts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bill_id         uuid        NOT NULL REFERENCES bills (id) ON DELETE CASCADE,
    channel         text        NOT NULL CHECK (channel IN ('email', 'sms')),
    attempt         integer     NOT NULL,
    replay_count    integer     NOT NULL,
    outcome         text        NOT NULL CHECK (outcome IN ('SENT', 'FAILED', 'EXPIRED')),
    error           text,
    idempotency_key text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX delivery_attempts_bill ON delivery_attempts (bill_id, id);
