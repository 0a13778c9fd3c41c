//! The write path. A single bill is ONE SQL statement: a data-modifying CTE inserts the bill
//! (`ON CONFLICT (idempotency_key) DO NOTHING`), its items (UNNEST) and its outbox row, and a
//! single statement is atomic, so no BEGIN/COMMIT round trips are needed. A batch is one
//! transaction running the same CTE over UNNEST arrays, plus the idempotency check of the rows
//! that conflicted.
//!
//! Concurrency: a duplicate key being inserted by a concurrent, uncommitted request makes our
//! insert wait on the unique index; when that commits we DO NOTHING and read the winner's row
//! (a fresh statement, so a fresh snapshot) to answer with its id.

use crate::idempotency::{compare, Match};
use crate::validation::ValidBill;
use shared::crypto::Keyring;
use shared::domain::{BillId, Channel};
use shared::events::event_type;
use shared::outbox::NewOutboxEvent;
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use uuid::Uuid;

/// One bill ready to insert: recipient encrypted, hash computed, outbox row built.
#[derive(Debug, Clone)]
pub struct PreparedBill {
    pub id: BillId,
    pub idempotency_key: Option<String>,
    pub request_hash: Vec<u8>,
    pub external_id: Option<String>,
    pub name_ct: String,
    pub email_ct: String,
    pub phone_ct: String,
    pub billing_period: String,
    pub due_date: chrono::NaiveDate,
    pub currency: String,
    pub total_minor: i64,
    pub traceparent: String,
    pub item_names: Vec<String>,
    pub item_amounts: Vec<i64>,
    pub outbox: NewOutboxEvent,
}

impl PreparedBill {
    /// Encrypts the recipient (bill id as associated data) and builds the `bills.email` event.
    pub fn new(
        bill: &ValidBill,
        idempotency_key: Option<String>,
        keyring: &Keyring,
        email_topic: &str,
        traceparent: &str,
    ) -> Self {
        let id = BillId::new();
        let outbox = NewOutboxEvent::bill(
            email_topic,
            event_type::EMAIL_REQUESTED,
            id,
            Channel::Email,
            0,
            0,
            Some(traceparent),
            None,
        );
        Self {
            id,
            idempotency_key,
            request_hash: bill.request_hash(),
            external_id: bill.external_id.clone(),
            name_ct: keyring.encrypt(id.0, "name", bill.name.expose()),
            email_ct: keyring.encrypt(id.0, "email", bill.email.expose()),
            phone_ct: keyring.encrypt(id.0, "phone", bill.phone.expose()),
            billing_period: bill.billing_period.clone(),
            due_date: bill.due_date,
            currency: bill.currency.as_str().to_owned(),
            total_minor: bill.total(),
            traceparent: traceparent.to_owned(),
            item_names: bill.items.iter().map(|i| i.name.clone()).collect(),
            item_amounts: bill.items.iter().map(|i| i.amount).collect(),
            outbox,
        }
    }

    fn positions(&self) -> Vec<i16> {
        (1..=self.item_names.len() as i16).collect()
    }
}

/// The single-bill statement. Parameters: see [`insert_one`]. The benchmark feeds this exact
/// text to pgbench.
pub const INSERT_ONE_SQL: &str = "WITH b AS (
    INSERT INTO bills (id, idempotency_key, request_hash, external_id, recipient_name,
                       recipient_email, recipient_phone, billing_period, due_date, currency,
                       total_minor, traceparent)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), i AS (
    INSERT INTO bill_items (bill_id, position, name, amount_minor)
    SELECT b.id, u.position, u.name, u.amount
    FROM b CROSS JOIN UNNEST($13::smallint[], $14::text[], $15::bigint[]) AS u(position, name, amount)
), o AS (
    INSERT INTO outbox (id, topic, aggregatetype, aggregateid, type, payload, headers)
    SELECT $16, $17, $18, b.id::text, $19, $20::json, $21::json FROM b
)
SELECT id FROM b";

/// What happened to one bill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Inserted now.
    Inserted(BillId),
    /// The key exists with the same request: answer with that bill.
    Replayed(BillId),
    /// The key exists with another request.
    Conflict,
}

/// Inserts one bill with its items and outbox row in one statement, or resolves its key.
#[tracing::instrument(skip_all, fields(bill.id = %bill.id))]
pub async fn insert_one(
    conn: &mut PgConnection,
    bill: &PreparedBill,
) -> Result<Written, sqlx::Error> {
    // A conflicting row can vanish between our insert and our read (its transaction rolled
    // back), so try again a few times before giving up.
    for _ in 0..3 {
        let inserted: Option<Uuid> = sqlx::query_scalar(INSERT_ONE_SQL)
            .bind(bill.id.0)
            .bind(&bill.idempotency_key)
            .bind(&bill.request_hash)
            .bind(&bill.external_id)
            .bind(&bill.name_ct)
            .bind(&bill.email_ct)
            .bind(&bill.phone_ct)
            .bind(&bill.billing_period)
            .bind(bill.due_date)
            .bind(&bill.currency)
            .bind(bill.total_minor)
            .bind(&bill.traceparent)
            .bind(bill.positions())
            .bind(&bill.item_names)
            .bind(&bill.item_amounts)
            .bind(bill.outbox.id.0)
            .bind(&bill.outbox.topic)
            .bind(bill.outbox.aggregate_type)
            .bind(&bill.outbox.event_type)
            .bind(bill.outbox.payload.to_string())
            .bind(bill.outbox.headers.to_string())
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = inserted {
            return Ok(Written::Inserted(BillId(id)));
        }
        let Some(key) = &bill.idempotency_key else {
            return Err(sqlx::Error::Protocol(
                "insert without a key returned no row".into(),
            ));
        };
        let existing: Option<(Uuid, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT id, request_hash FROM bills WHERE idempotency_key = $1")
                .bind(key)
                .fetch_optional(&mut *conn)
                .await?;
        if let Some((id, hash)) = existing {
            return Ok(match compare(hash.as_deref(), &bill.request_hash) {
                Match::Replay => Written::Replayed(BillId(id)),
                Match::Conflict => Written::Conflict,
            });
        }
    }
    Err(sqlx::Error::Protocol(
        "idempotency key kept conflicting with vanishing rows".into(),
    ))
}

/// The batch statement: the same CTE over arrays. Items and outbox rows are kept only for the
/// bills actually inserted (not for keys that already existed).
pub const INSERT_BATCH_SQL: &str = "WITH b AS (
    INSERT INTO bills (id, idempotency_key, request_hash, external_id, recipient_name,
                       recipient_email, recipient_phone, billing_period, due_date, currency,
                       total_minor, traceparent)
    SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bytea[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::date[], $10::text[],
                         $11::bigint[], $12::text[])
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING id
), i AS (
    INSERT INTO bill_items (bill_id, position, name, amount_minor)
    SELECT u.bill_id, u.position, u.name, u.amount
    FROM UNNEST($13::uuid[], $14::smallint[], $15::text[], $16::bigint[])
         AS u(bill_id, position, name, amount)
    WHERE u.bill_id IN (SELECT id FROM b)
), o AS (
    INSERT INTO outbox (id, topic, aggregatetype, aggregateid, type, payload, headers)
    SELECT u.id, $17, $18, u.bill_id::text, $19, u.payload, u.headers
    FROM UNNEST($20::uuid[], $21::uuid[], $22::text[]::json[], $23::text[]::json[])
         AS u(id, bill_id, payload, headers)
    WHERE u.bill_id IN (SELECT id FROM b)
)
SELECT id FROM b";

/// Runs [`INSERT_BATCH_SQL`] for `bills` (all of one outbox topic and event type) on `conn`,
/// one statement, so atomic even outside a transaction. Returns the ids of the bills inserted;
/// a bill whose idempotency key already existed (or repeats an earlier one of `bills`) is not.
pub async fn insert_rows(
    conn: &mut PgConnection,
    bills: &[&PreparedBill],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let n = bills.len();
    let items: usize = bills.iter().map(|b| b.item_names.len()).sum();
    let mut ids = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut external_ids = Vec::with_capacity(n);
    let (mut names, mut emails, mut phones) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut periods, mut dues, mut currencies, mut totals, mut tps) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut item_bill, mut item_pos, mut item_name, mut item_amount) = (
        Vec::with_capacity(items),
        Vec::with_capacity(items),
        Vec::with_capacity(items),
        Vec::with_capacity(items),
    );
    let (mut ev_ids, mut payloads, mut headers) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for b in bills {
        ids.push(b.id.0);
        keys.push(b.idempotency_key.as_deref());
        hashes.push(b.request_hash.as_slice());
        external_ids.push(b.external_id.as_deref());
        names.push(b.name_ct.as_str());
        emails.push(b.email_ct.as_str());
        phones.push(b.phone_ct.as_str());
        periods.push(b.billing_period.as_str());
        dues.push(b.due_date);
        currencies.push(b.currency.as_str());
        totals.push(b.total_minor);
        tps.push(b.traceparent.as_str());
        for (pos, (name, amount)) in b.item_names.iter().zip(&b.item_amounts).enumerate() {
            item_bill.push(b.id.0);
            item_pos.push(pos as i16 + 1);
            item_name.push(name.as_str());
            item_amount.push(*amount);
        }
        ev_ids.push(b.outbox.id.0);
        payloads.push(b.outbox.payload.to_string());
        headers.push(b.outbox.headers.to_string());
    }
    let Some(first) = bills.first() else {
        return Ok(Vec::new());
    };

    sqlx::query_scalar(INSERT_BATCH_SQL)
        .bind(&ids)
        .bind(&keys)
        .bind(&hashes)
        .bind(&external_ids)
        .bind(&names)
        .bind(&emails)
        .bind(&phones)
        .bind(&periods)
        .bind(&dues)
        .bind(&currencies)
        .bind(&totals)
        .bind(&tps)
        .bind(&item_bill)
        .bind(&item_pos)
        .bind(&item_name)
        .bind(&item_amount)
        .bind(&first.outbox.topic)
        .bind(first.outbox.aggregate_type)
        .bind(&first.outbox.event_type)
        .bind(&ev_ids)
        .bind(&ids)
        .bind(&payloads)
        .bind(&headers)
        .fetch_all(conn)
        .await
}

/// Inserts a batch in one transaction. Returns, per bill, `Inserted` or `Replayed`; or, when
/// any key was used before with another body, rolls back everything and returns the indexes
/// of those bills.
#[tracing::instrument(skip_all, fields(batch.size = bills.len()))]
pub async fn insert_batch(
    pool: &PgPool,
    bills: &[PreparedBill],
) -> Result<Result<Vec<Written>, Vec<usize>>, sqlx::Error> {
    let n = bills.len();
    let mut tx = pool.begin().await?;
    let inserted = insert_rows(&mut tx, &bills.iter().collect::<Vec<_>>()).await?;

    if inserted.len() == n {
        tx.commit().await?;
        return Ok(Ok(bills.iter().map(|b| Written::Inserted(b.id)).collect()));
    }

    // Some keys already existed: each must carry the same request, or the batch is refused.
    let inserted: HashSet<Uuid> = inserted.into_iter().collect();
    let pending: Vec<(usize, &str)> = bills
        .iter()
        .enumerate()
        .filter(|(_, b)| !inserted.contains(&b.id.0))
        .filter_map(|(i, b)| b.idempotency_key.as_deref().map(|k| (i, k)))
        .collect();
    let lookup: Vec<&str> = pending.iter().map(|(_, k)| *k).collect();
    let existing: Vec<(String, Uuid, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT idempotency_key, id, request_hash FROM bills WHERE idempotency_key = ANY($1)",
    )
    .bind(&lookup)
    .fetch_all(&mut *tx)
    .await?;
    let existing: std::collections::HashMap<&str, (Uuid, Option<&[u8]>)> = existing
        .iter()
        .map(|(k, id, h)| (k.as_str(), (*id, h.as_deref())))
        .collect();

    let mut out: Vec<Written> = Vec::with_capacity(n);
    let mut conflicts = Vec::new();
    for (i, b) in bills.iter().enumerate() {
        if inserted.contains(&b.id.0) {
            out.push(Written::Inserted(b.id));
            continue;
        }
        let found = b.idempotency_key.as_deref().and_then(|k| existing.get(k));
        match found {
            Some((id, hash)) if compare(*hash, &b.request_hash) == Match::Replay => {
                out.push(Written::Replayed(BillId(*id)));
            }
            _ => {
                // Another body, or a conflicting row that vanished: refuse rather than guess.
                conflicts.push(i);
                out.push(Written::Conflict);
            }
        }
    }
    if conflicts.is_empty() {
        tx.commit().await?;
        Ok(Ok(out))
    } else {
        tx.rollback().await?;
        Ok(Err(conflicts))
    }
}
