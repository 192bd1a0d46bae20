//! Patroni hooks that keep an external PgBouncer (`pool_mode=transaction`) in step with the
//! cluster: PAUSE before the outgoing leader stops, RESUME once the new primary accepts writes.
//!
//! The library holds everything; `bin/` only parses flags and calls in. Decisions
//! ([`decision`]) and parsing ([`patronictl`]) are pure functions over data so they can be
//! tested with tables and property tests; I/O lives in [`pgbouncer`], [`postgres`] and
//! [`patronictl::Patronictl`], [`patroni_api`], [`route`] and [`safety`].

pub mod before_stop;
pub mod config;
pub mod conninfo;
pub mod decision;
pub mod detach;
pub mod exit;
pub mod fleet;
pub mod logging;
pub mod names;
pub mod on_role_change;
pub mod owner;
pub mod patroni_api;
pub mod patronictl;
pub mod pgbouncer;
pub mod postgres;
pub mod report;
pub mod route;
pub mod runtime;
pub mod safety;
pub mod tls;
pub mod view;
pub mod watchdog;
pub mod watchdog_http;
