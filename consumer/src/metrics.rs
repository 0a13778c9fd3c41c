//! Metric names of the consumer (Prometheus, served on `/metrics`). Labels never carry
//! personal data or bill ids.

/// Gauge: bills (records) currently in flight.
pub const IN_FLIGHT: &str = "billing_consumer_in_flight";
/// Counter `{channel, outcome}`: provider calls by result (`sent`, `duplicate`, `transient`, `permanent`).
pub const SENDS: &str = "billing_sends_total";
/// Counter: bills moved from email to SMS after a failure.
pub const FALLBACKS: &str = "billing_fallbacks_total";
/// Counter `{reason}`: dead-letter rows written (by the outcome writer and the sweeper).
pub const DLT: &str = "billing_dlt_total";
/// Counter: records acknowledged without sending (bill not PENDING on that channel).
pub const CLAIMS_SKIPPED: &str = "billing_claims_skipped_total";
/// Counter: outcomes discarded because the lease had been reclaimed.
pub const FENCED: &str = "billing_outcomes_fenced_total";
/// Counter: expired leases the sweeper handled (requeued, moved to SMS, or dead).
pub const SWEEPS: &str = "billing_leases_expired_total";
/// Histogram `{channel}`: provider call latency in seconds.
pub const PROVIDER_LATENCY: &str = "billing_provider_latency_seconds";
/// Counter: bills whose outcome was written as SENT.
pub const SENT: &str = "billing_bills_sent_total";

/// Registers descriptions so `/metrics` documents every series.
pub fn describe() {
    metrics::describe_gauge!(IN_FLIGHT, "Records in flight in this consumer");
    metrics::describe_counter!(SENDS, "Provider calls by channel and outcome");
    metrics::describe_counter!(FALLBACKS, "Bills moved from email to SMS");
    metrics::describe_counter!(DLT, "Dead-letter rows written by reason");
    metrics::describe_counter!(
        CLAIMS_SKIPPED,
        "Records skipped because the bill was not PENDING on that channel"
    );
    metrics::describe_counter!(FENCED, "Outcomes discarded because the lease was reclaimed");
    metrics::describe_counter!(
        SWEEPS,
        "Expired leases handled by the sweeper (requeued, moved to SMS, or dead)"
    );
    metrics::describe_histogram!(
        PROVIDER_LATENCY,
        metrics::Unit::Seconds,
        "Provider call latency"
    );
    metrics::describe_counter!(SENT, "Bills recorded as SENT");
}
