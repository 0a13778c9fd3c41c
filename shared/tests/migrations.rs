//! The migrations apply to an empty database, are recorded, and a second run is a no-op.

use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn migrations_apply_to_an_empty_database_and_are_idempotent(pool: PgPool) {
    shared::db::migrate(&pool).await.expect("first run applies");
    shared::db::migrate(&pool)
        .await
        .expect("second run is a no-op");

    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for t in [
        "bill_items",
        "bills",
        "delivery_attempts",
        "outbox",
        "outbox_relay",
        "outbox_parked",
    ] {
        assert!(
            tables.contains(&t.to_owned()),
            "missing table {t}: {tables:?}"
        );
    }

    // Debezium's outbox event router column names are part of the contract.
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'outbox'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for c in [
        "id",
        "aggregatetype",
        "aggregateid",
        "type",
        "payload",
        "topic",
        "headers",
    ] {
        assert!(cols.contains(&c.to_owned()), "outbox lacks {c}");
    }

    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(applied as usize, shared::MIGRATOR.iter().count());
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_schema_rejects_impossible_states(pool: PgPool) {
    let bad_status = sqlx::query(
        "INSERT INTO bills (id, recipient_name, recipient_email, recipient_phone, billing_period,
                            due_date, currency, total_minor, status)
         VALUES (gen_random_uuid(), 'x', 'x', 'x', '2026-11', '2026-12-01', 'KRW', 1, 'LOST')",
    )
    .execute(&pool)
    .await;
    assert!(bad_status.is_err(), "an unknown status must be refused");
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn inserting_outbox_rows_notifies_listeners_on_commit(pool: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("outbox_inserted").await.unwrap();
    let event = shared::outbox::NewOutboxEvent::bill(
        "bills.email",
        shared::events::event_type::EMAIL_REQUESTED,
        shared::domain::BillId::new(),
        shared::domain::Channel::Email,
        0,
        0,
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        None,
    );
    let mut conn = pool.acquire().await.unwrap();
    shared::outbox::insert(&mut conn, std::slice::from_ref(&event))
        .await
        .unwrap();
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within the deadline")
        .unwrap();
    assert_eq!(n.channel(), "outbox_inserted");

    let (payload, headers): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT payload, headers FROM outbox WHERE id = $1")
            .bind(event.id.0)
            .fetch_one(&pool)
            .await
            .unwrap();
    let parsed: shared::events::BillEvent = serde_json::from_value(payload).unwrap();
    assert_eq!(parsed.event_id, event.id.0);
    assert_eq!(headers["event_type"], "bill.email_requested");
    assert!(headers["traceparent"].as_str().unwrap().starts_with("00-"));
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn the_relay_waker_notifies_listeners_and_folds_bursts(pool: PgPool) {
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener
        .listen(shared::outbox::NOTIFY_CHANNEL)
        .await
        .unwrap();
    let waker = shared::outbox::RelayWaker::new(pool.clone());
    for _ in 0..100 {
        waker.poke();
    }
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification within the deadline")
        .unwrap();
    assert_eq!(first.channel(), shared::outbox::NOTIFY_CHANNEL);
    // A burst of pokes folds into at most two notifications (one in flight, one pending).
    let mut extra = 0;
    while let Ok(Ok(_)) =
        tokio::time::timeout(std::time::Duration::from_millis(500), listener.recv()).await
    {
        extra += 1;
    }
    assert!(extra <= 1, "100 pokes sent {} notifications", extra + 1);
}
