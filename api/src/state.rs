//! What every handler shares: the pool, the keyring, topic names and the admin settings.

use secrecy::SecretString;
use shared::config::Topics;
use shared::crypto::Keyring;
use sqlx::PgPool;
use std::sync::Arc;

/// Cheap to clone: the pool is reference-counted and the rest sits behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Wakes the relays after a commit that wrote outbox rows.
    pub relay_waker: shared::outbox::RelayWaker,
    inner: Arc<Inner>,
}

struct Inner {
    keyring: Keyring,
    topics: Topics,
    admin_token: Option<SecretString>,
    max_replays: i32,
}

impl AppState {
    pub fn new(
        pool: PgPool,
        keyring: Keyring,
        topics: Topics,
        admin_token: Option<SecretString>,
        max_replays: i32,
    ) -> Self {
        Self {
            relay_waker: shared::outbox::RelayWaker::new(pool.clone()),
            pool,
            inner: Arc::new(Inner {
                keyring,
                topics,
                admin_token,
                max_replays,
            }),
        }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.inner.keyring
    }

    pub fn topics(&self) -> &Topics {
        &self.inner.topics
    }

    /// `None` when `ADMIN_TOKEN` is not set: admin endpoints then answer 503.
    pub fn admin_token(&self) -> Option<&SecretString> {
        self.inner.admin_token.as_ref()
    }

    pub fn max_replays(&self) -> i32 {
        self.inner.max_replays
    }
}
