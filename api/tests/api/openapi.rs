//! The checked-in OpenAPI document must match the one generated from the code.

#[test]
fn openapi_document_matches_the_checked_in_file() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    let generated = billing_api::openapi::to_pretty_json();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is out of date with the code; regenerate it with\n  \
         cargo run -p billing-api -- openapi --out openapi/openapi.json"
    );
}

#[test]
fn the_document_lists_every_endpoint() {
    let doc: serde_json::Value =
        serde_json::from_str(&billing_api::openapi::to_pretty_json()).unwrap();
    for path in [
        "/v1/bills",
        "/v1/bills/batch",
        "/v1/bills/{id}",
        "/v1/bills/{id}/deliveries",
        "/v1/stats",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/admin/dead-letters",
        "/v1/admin/dead-letters/{id}/replay",
        "/v1/admin/dead-letters/replay",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
}
