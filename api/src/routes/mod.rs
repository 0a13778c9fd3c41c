//! HTTP routes, one module per resource action.

pub mod admin;
pub mod bills;
pub mod health;
pub mod stats;
