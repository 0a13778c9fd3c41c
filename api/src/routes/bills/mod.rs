//! `/v1/bills`: enqueue one bill or a batch, read a bill, its deliveries, and list bills.
//! The request types here document the bodies in OpenAPI; handlers parse the untyped JSON
//! themselves (see [`crate::validation`]) so that every bad field is reported at once.

pub mod batch;
pub mod create;
pub mod deliveries;
pub mod get;
pub mod list;

use crate::state::AppState;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use shared::domain::{BillId, BillStatus, Channel};
use utoipa::ToSchema;
use uuid::Uuid;

/// The recipient in clear; encrypted before it reaches the database.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RecipientInput {
    /// 1 to 200 characters, any script.
    #[schema(example = "Kim Minsu", min_length = 1, max_length = 200)]
    pub name: String,
    #[schema(example = "kim.minsu@example.com")]
    pub email: String,
    /// E.164 (`+821012345678`) or a Korean mobile number (`010-1234-5678`).
    #[schema(example = "010-1234-5678")]
    pub phone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemInput {
    /// 1 to 200 characters.
    #[schema(example = "Mobile plan, November", min_length = 1, max_length = 200)]
    pub name: String,
    /// Minor units of the bill's currency (won, cents), 0 to 10^15.
    #[schema(example = 55000, minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
}

/// A bill to enqueue.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateBillRequest {
    pub recipient: RecipientInput,
    /// The month billed, `YYYY-MM`.
    #[schema(example = "2026-11", pattern = "^[0-9]{4}-(0[1-9]|1[0-2])$")]
    pub billing_period: String,
    #[schema(value_type = String, format = Date, example = "2026-12-10")]
    pub due_date: String,
    /// ISO 4217 code.
    #[schema(example = "KRW", pattern = "^[A-Z]{3}$")]
    pub currency: String,
    /// 1 to 100 items.
    #[schema(min_items = 1, max_items = 100)]
    pub items: Vec<ItemInput>,
    /// Your id for the bill (at most 200 characters); also the idempotency key when no
    /// `Idempotency-Key` header is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub external_id: Option<String>,
}

/// Up to 1,000 bills, accepted all or none.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchRequest {
    #[schema(min_items = 1, max_items = 1000)]
    pub bills: Vec<CreateBillRequest>,
}

/// The answer to an accepted bill.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BillAccepted {
    #[schema(value_type = Uuid)]
    pub id: BillId,
    pub status: BillStatus,
    pub channel: Channel,
    /// Where to read the bill.
    #[schema(example = "/v1/bills/01937c2e-7b1a-7c3e-9f00-3a5d2b1c0e4f")]
    pub location: String,
}

impl BillAccepted {
    /// The answer a new bill gets, and that a replay of it gets again.
    pub fn new(id: BillId) -> Self {
        Self {
            id,
            status: BillStatus::Pending,
            channel: Channel::Email,
            location: location(id),
        }
    }
}

pub fn location(id: BillId) -> String {
    format!("/v1/bills/{id}")
}

/// Parses a bill id from the path; a bad one is a 400 problem naming the `id` parameter.
pub fn parse_id(raw: &str) -> Result<BillId, crate::error::ApiError> {
    Uuid::parse_str(raw)
        .map(BillId)
        .map_err(|_| crate::error::ApiError::BadRequest {
            detail: "the bill id must be a UUID".into(),
            errors: vec![crate::validation::Loc::root()
                .key("id")
                .error("must be a UUID")],
        })
}

/// The `/v1/bills` routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/bills", post(create::create_bill).get(list::list_bills))
        .route("/v1/bills/batch", post(batch::create_batch))
        .route("/v1/bills/{id}", get(get::get_bill))
        .route(
            "/v1/bills/{id}/deliveries",
            get(deliveries::list_deliveries),
        )
}
