//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations. The
//! checked-in copy is `openapi/openapi.json`; regenerate it with
//! `cargo run -p billing-api -- openapi --out openapi/openapi.json` (a test fails on drift).

use crate::error::{FieldError, Problem};
use crate::routes::{admin, bills, health, stats};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::Modify;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "billing-api",
        description = "Enqueue bills for reliable delivery by email, with SMS as the fallback. \
Every accepted bill is committed together with its outbox event. Errors are \
`application/problem+json` (RFC 9457)."
    ),
    paths(
        bills::create::create_bill,
        bills::batch::create_batch,
        bills::get::get_bill,
        bills::deliveries::list_deliveries,
        bills::list::list_bills,
        stats::stats,
        health::healthz,
        health::readyz,
        health::metrics,
        admin::dead_letters::list_dead_letters,
        admin::replay::replay_one,
        admin::replay::replay_many,
    ),
    modifiers(&BearerAuth),
    components(schemas(Problem, FieldError)),
    tags(
        (name = "bills", description = "Enqueue and read bills"),
        (name = "stats", description = "Counts and backlog"),
        (name = "ops", description = "Health, readiness and metrics"),
        (name = "admin", description = "Dead letters and replay (Authorization: Bearer $ADMIN_TOKEN)"),
    )
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the admin operations require.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The document as pretty JSON with a trailing newline: the form checked in.
pub fn to_pretty_json() -> String {
    let mut json = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    json.push('\n');
    json
}
