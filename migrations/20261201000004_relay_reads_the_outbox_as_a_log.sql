-- The relay reads the outbox as a log instead of claiming, locking and moving each row.
--
-- Measured on a 200,000-row backlog (2 cores shared by Postgres, the relay and the broker),
-- the per-row design (lock each row FOR UPDATE SKIP LOCKED, then move it to outbox_published)
-- drained ~63,000 rows/s against ~470,000 records/s for the raw producer: Postgres spent
-- ~19 us of CPU per row writing a row lock, a delete and a full copy of the row (heap, two
-- indexes, WAL). Reading a row costs ~3 us. So publishing now writes nothing per row:
--
-- * Every outbox row records the id of the transaction that wrote it (`txid`).
-- * `outbox_relay` holds the relay's position as Postgres snapshots, as PgQ (Skype's queue)
--   does: every row whose writer is visible in `done` (had committed when that snapshot was
--   taken) is settled. The relay takes a new snapshot (`tick`); the rows visible in `tick` but
--   not in `done` are exactly those committed in between, whatever order their `seq` values
--   were handed out in, so a writer that commits late is never skipped. It publishes them in
--   `seq` order, in chunks, and records after each chunk how far it got (`tick_seq`); when the
--   tick is done, `done` becomes `tick`. One small update per chunk of thousands of rows.
-- * A relay works only while it holds the row of `outbox_relay` (FOR UPDATE SKIP LOCKED), so
--   two relays never publish the same chunk; the others stand by.
-- * A row that cannot be published (unknown topic, too large, a partial broker failure) is
--   parked in `outbox_parked` with its error and retried on its own back-off. Later rows of
--   the same bill are parked behind it, so a bill's events never overtake each other, and the
--   other bills go on.
-- * Retention deletes settled rows older than its age straight from `outbox`.
--
-- Debezium's outbox event router only needs the insert, so CDC works on `outbox` unchanged.

ALTER TABLE outbox ADD COLUMN txid xid8;
-- Rows published before this migration come back, older than any snapshot (settled).
INSERT INTO outbox (id, seq, aggregatetype, aggregateid, type, payload, topic, headers,
                    created_at, txid)
     OVERRIDING SYSTEM VALUE
SELECT id, seq, aggregatetype, aggregateid, type, payload, topic, headers, created_at, '1'
  FROM outbox_published;
-- Unpublished rows: this transaction's, so the relay's first snapshot after it finds them.
UPDATE outbox SET txid = pg_current_xact_id() WHERE txid IS NULL;
ALTER TABLE outbox ALTER COLUMN txid SET DEFAULT pg_current_xact_id(),
                   ALTER COLUMN txid SET NOT NULL;
-- The relay finds a tick's rows by writer (txid >= xmax of `done`, or one of its running ones),
-- and lists their `seq` from the index alone once vacuum has marked the pages all-visible.
CREATE INDEX outbox_txid ON outbox (txid) INCLUDE (seq);
-- No per-row ordering probe any more, and no per-row retry state on the outbox itself.
DROP INDEX outbox_aggregate_seq;
DROP VIEW outbox_events;
DROP TABLE outbox_published;
ALTER TABLE outbox DROP COLUMN publish_attempts,
                   DROP COLUMN next_attempt_at,
                   DROP COLUMN last_error;
-- `json`, not `jsonb`: the relay sends the text and never looks inside. Rendering `jsonb` back
-- to text was two thirds of the cost of reading a row (5,000 rows: 17 ms with payload and
-- headers as text from jsonb, 7.5 ms without); `json` keeps the text as written (after
-- validating it), which is also cheaper for the writers. Debezium reads either.
ALTER TABLE outbox ALTER COLUMN payload TYPE json USING payload::json,
                   ALTER COLUMN headers DROP DEFAULT,
                   ALTER COLUMN headers TYPE json USING headers::json,
                   ALTER COLUMN headers SET DEFAULT '{}'::json;

CREATE TABLE outbox_relay (
    lane       smallint    PRIMARY KEY CHECK (lane = 0),
    -- every row whose writer this snapshot sees is settled (published or parked)
    done       pg_snapshot NOT NULL,
    -- the snapshot being worked through, and the last seq of it settled
    tick       pg_snapshot,
    tick_seq   bigint,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((tick IS NULL) = (tick_seq IS NULL))
);
-- The starting point: the snapshot of now, with this transaction still running, so that the
-- rows it marked above (and those of writers running now) belong to the first tick.
-- (A snapshot's xmax is one past the last completed transaction, which may be below our own.)
INSERT INTO outbox_relay (lane, done)
SELECT 0, (least(xmin, me) || ':' || greatest(xmax, me + 1) || ':'
           || (SELECT string_agg(x::text, ',' ORDER BY x)
                 FROM (SELECT pg_snapshot_xip(s)::text::bigint AS x UNION SELECT me) xs))::pg_snapshot
  FROM (SELECT s, pg_snapshot_xmin(s)::text::bigint AS xmin, pg_snapshot_xmax(s)::text::bigint AS xmax,
               pg_current_xact_id()::text::bigint AS me
          FROM pg_current_snapshot() AS s) now_;

CREATE TABLE outbox_parked (
    seq             bigint      PRIMARY KEY,
    id              uuid        NOT NULL,
    aggregateid     text        COLLATE "C" NOT NULL,
    -- failed attempts so far (0: parked only because an earlier event of the bill is)
    attempts        integer     NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    parked_at       timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz
);
-- the relay: is this bill held back, which parked rows are due
CREATE INDEX outbox_parked_waiting ON outbox_parked (aggregateid, seq) WHERE published_at IS NULL;

-- Rows not published yet: not settled by the relay's position, or parked and still waiting.
-- (Written as a UNION ALL of index ranges: with an OR the planner may walk the whole index.)
CREATE VIEW outbox_pending AS
SELECT o.*
  FROM outbox_relay r
  JOIN outbox o ON o.txid >= pg_snapshot_xmax(r.done)
 WHERE NOT (r.tick IS NOT NULL AND o.seq <= r.tick_seq AND pg_visible_in_snapshot(o.txid, r.tick))
UNION ALL
SELECT o.*
  FROM outbox_relay r
  JOIN outbox o ON o.txid = ANY (ARRAY(SELECT pg_snapshot_xip(r.done)))
 WHERE NOT (r.tick IS NOT NULL AND o.seq <= r.tick_seq AND pg_visible_in_snapshot(o.txid, r.tick))
UNION ALL
SELECT o.*
  FROM outbox_parked k
  JOIN outbox o ON o.seq = k.seq
 WHERE k.published_at IS NULL;

-- Every event with its publication state, for operators and tests. `published_at` is known
-- only for parked rows (the relay keeps no per-row record of normal publications).
CREATE VIEW outbox_events AS
SELECT o.id, o.seq, o.aggregatetype, o.aggregateid, o.type, o.payload, o.topic, o.headers,
       o.created_at, o.txid,
       CASE WHEN k.seq IS NOT NULL THEN k.published_at IS NOT NULL
            ELSE pg_visible_in_snapshot(o.txid, r.done)
                 OR (r.tick IS NOT NULL AND o.seq <= r.tick_seq
                     AND pg_visible_in_snapshot(o.txid, r.tick))
       END AS published,
       k.published_at,
       COALESCE(k.attempts, 0) AS publish_attempts,
       k.last_error,
       k.next_attempt_at
  FROM outbox o
 CROSS JOIN outbox_relay r
  LEFT JOIN outbox_parked k ON k.seq = o.seq;
ANALYZE outbox_relay;
