-- Publishing moves a row out of the outbox instead of updating it.
--
-- Measured on a 200,000-row backlog (2 cores, relay + Postgres + tansu): marking 1,000 rows
-- published with an UPDATE took 10-15 ms, the largest part of a relay batch. The update can
-- never be HOT (published_at is in the predicates of the partial indexes), so every row got a
-- new version with entries in the primary key, the seq index and the published_at index, and
-- bottom-up index deletion and killed-item cleanup to follow. Moving the row (DELETE from the
-- outbox, INSERT into outbox_published, one statement) took 3-6 ms: the delete only stamps the
-- old version, and the insert lands at the right-hand edge of two small indexes.
--
-- So `outbox` holds exactly the rows still to publish (its indexes stay small and claims scan
-- only live work), and `outbox_published` holds what was published, with when, until the
-- relay's retention deletes it. `outbox_events` shows both, for operators and tests.
-- Debezium's outbox event router reads inserts from the WAL and ignores deletes, so CDC still
-- works on `outbox` unchanged (its documented pattern deletes the rows right after inserting).

-- Every claim checks, per claimed row, that no earlier row of the same bill is unpublished: an
-- index probe on aggregateid. Under the database's default collation (C.UTF-8, en_US.UTF-8)
-- each comparison in that index goes through strcoll: the probes were 8 of the 9 ms of a
-- 1,000-row claim. aggregateid is an identifier compared for equality: byte order is right.
ALTER TABLE outbox ALTER COLUMN aggregateid TYPE text COLLATE "C";

CREATE TABLE outbox_published (
    id               uuid        PRIMARY KEY,
    seq              bigint      NOT NULL,
    aggregatetype    text        NOT NULL,
    aggregateid      text        COLLATE "C" NOT NULL,
    type             text        NOT NULL,
    payload          jsonb       NOT NULL,
    topic            text        NOT NULL,
    headers          jsonb       NOT NULL,
    created_at       timestamptz NOT NULL,
    published_at     timestamptz NOT NULL,
    -- attempts before the one that succeeded, and the last error of those
    publish_attempts integer     NOT NULL,
    last_error       text
);
-- retention: published rows by age
CREATE INDEX outbox_published_published_at ON outbox_published (published_at);

INSERT INTO outbox_published
SELECT id, seq, aggregatetype, aggregateid, type, payload, topic, headers, created_at,
       published_at, publish_attempts, last_error
  FROM outbox WHERE published_at IS NOT NULL;
DELETE FROM outbox WHERE published_at IS NOT NULL;

-- Drops outbox_unpublished, outbox_unpublished_aggregate and outbox_published_at with it: every
-- row left is unpublished, so the claim walks the seq index (unique, from the first migration).
ALTER TABLE outbox DROP COLUMN published_at;
-- the relay's ordering check: is there an earlier row of this bill still in the outbox?
CREATE INDEX outbox_aggregate_seq ON outbox (aggregateid, seq);

-- Every event, published or not.
CREATE VIEW outbox_events AS
SELECT id, seq, aggregatetype, aggregateid, type, payload, topic, headers, created_at,
       NULL::timestamptz AS published_at, publish_attempts, last_error
  FROM outbox
UNION ALL
SELECT id, seq, aggregatetype, aggregateid, type, payload, topic, headers, created_at,
       published_at, publish_attempts, last_error
  FROM outbox_published;
