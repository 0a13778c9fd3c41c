//! Integration tests of billing-api against real Postgres: each `#[sqlx::test]` gets a fresh
//! migrated database from `DATABASE_URL` and drives the router with `oneshot`.

mod admin;
mod batch;
mod create;
mod fuzz;
mod helpers;
mod openapi;
mod ops;
mod read;
