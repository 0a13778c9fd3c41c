//! Bad input never yields a 5xx: hundreds of mutated bills (wrong types, odd unicode, NUL,
//! huge numbers, deep nesting) against both write endpoints and the readers' parameters.

use crate::helpers::*;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A tiny deterministic generator (xorshift64*): reproducible cases without extra crates.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

fn odd_value(rng: &mut Rng, depth: u32) -> Value {
    let strings = [
        "",
        " ",
        "\u{0}",
        "a\u{0}b",
        "\u{202e}evil",
        "💸",
        "김민수",
        "2026-02-30",
        "9999-99",
        "+82 10 0000 0000",
        "x@y",
        "KRW ",
        "null",
        "<script>",
        "'; DROP TABLE bills; --",
        "\\",
        "%",
        "_",
        "\u{ffff}",
        "0000-00-00",
        "2026-11",
    ];
    match rng.next() % 10 {
        0 => Value::Null,
        1 => json!(rng.next() % 2 == 0),
        2 => json!(i64::MAX),
        3 => json!(-1),
        4 => json!(1.5e300),
        5 => json!(u64::MAX),
        6 if depth < 3 => Value::Array(
            (0..rng.next() % 3)
                .map(|_| odd_value(rng, depth + 1))
                .collect(),
        ),
        7 if depth < 3 => {
            json!({ "name": odd_value(rng, depth + 1), "amount": odd_value(rng, depth + 1) })
        }
        8 => json!("x".repeat((rng.next() % 400) as usize)),
        _ => json!(rng.pick(&strings)),
    }
}

/// `bill()` with one to three fields replaced by odd values.
fn mutated(rng: &mut Rng) -> Value {
    let paths: [&[&str]; 12] = [
        &["recipient"],
        &["recipient", "name"],
        &["recipient", "email"],
        &["recipient", "phone"],
        &["billing_period"],
        &["due_date"],
        &["currency"],
        &["items"],
        &["external_id"],
        &["items", "0"],
        &["items", "0", "amount"],
        &["items", "1", "name"],
    ];
    let mut body = bill((rng.next() % 1000) as i64);
    for _ in 0..=(rng.next() % 3) {
        let path = *rng.pick(&paths);
        let value = odd_value(rng, 0);
        let mut slot = &mut body;
        for key in path {
            slot = match key.parse::<usize>() {
                Ok(i) if slot.as_array().is_some_and(|a| a.len() > i) => &mut slot[i],
                Ok(_) => break,
                Err(_) if slot.is_object() => &mut slot[*key],
                Err(_) => break,
            };
        }
        *slot = value;
    }
    body
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn no_mutated_bill_gets_a_5xx(pool: PgPool) {
    let app = app(pool);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for case in 0..300 {
        let body = mutated(&mut rng);
        let single = send(&app, post("/v1/bills", &body)).await;
        assert!(
            single.status.as_u16() < 500,
            "case {case}: {body} -> {}",
            single.raw
        );
        if single.status.is_client_error() {
            single.problem(single.status.as_u16());
        }
        let batch = send(
            &app,
            post(
                "/v1/bills/batch",
                &json!({"bills": [bill(1), body.clone()]}),
            ),
        )
        .await;
        assert!(
            batch.status.as_u16() < 500,
            "case {case}: {body} -> {}",
            batch.raw
        );
    }
}

#[sqlx::test(migrator = "shared::MIGRATOR")]
async fn odd_query_strings_and_paths_never_get_a_5xx(pool: PgPool) {
    let app = app(pool);
    for uri in [
        "/v1/bills?status=%00",
        "/v1/bills?limit=-1",
        "/v1/bills?limit=99999999999999999999",
        "/v1/bills?cursor=%ff%fe",
        "/v1/bills?status=DEAD&status=SENT",
        "/v1/bills?cursor=00000000-0000-0000-0000-000000000000",
        "/v1/bills/%00",
        "/v1/bills/00000000-0000-0000-0000-000000000000/deliveries",
        "/v1/bills/batch",
        "/v1/stats?x=1",
    ] {
        let answer = send(&app, get(uri)).await;
        assert!(answer.status.as_u16() < 500, "{uri} -> {}", answer.raw);
    }
}
