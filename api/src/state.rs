//! What every handler shares: the pool, the single-bill writers, the keyring, topic names and
//! the admin settings.

use secrecy::SecretString;
use shared::config::Topics;
use shared::crypto::Keyring;
use sqlx::PgPool;
use std::sync::Arc;

use crate::writers::Writers;

/// Single-bill writers when the settings do not say (`API_WRITERS`).
pub const DEFAULT_WRITERS: usize = 4;
/// Most single bills one writer commits together when the settings do not say
/// (`API_WRITE_GROUP`).
pub const DEFAULT_WRITE_GROUP: usize = 64;

/// Cheap to clone: the pool is reference-counted and the rest sits behind one `Arc`.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Wakes the relays after a commit that wrote outbox rows.
    pub relay_waker: shared::outbox::RelayWaker,
    /// The single-bill write path's own connections (see [`crate::writers`]).
    pub writers: Writers,
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
            writers: Writers::new(&pool, DEFAULT_WRITERS, DEFAULT_WRITE_GROUP),
            pool,
            inner: Arc::new(Inner {
                keyring,
                topics,
                admin_token,
                max_replays,
            }),
        }
    }

    /// Replaces the single-bill writers by `count` of them, each committing up to `group`
    /// waiting bills together.
    pub fn with_writers(mut self, count: usize, group: usize) -> Self {
        self.writers = Writers::new(&self.pool, count, group);
        self
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
