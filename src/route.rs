//! Waiting for PgBouncer's route to the cluster to reach the new primary.
//!
//! A read-write Service (or HAProxy) follows a promotion a little late. RESUMEd too early,
//! PgBouncer's first login goes to the old address, fails, and PgBouncer waits
//! `server_login_retry` (15 s by default) before trying again: a short pause becomes a long
//! stall. So RESUME waits until the upstream answers from this very server.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::postgres::Server;

/// What makes one server distinguishable from another member of the same cluster: the
/// cluster's system identifier is shared by all members, the postmaster start time is not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub system_identifier: String,
    /// Postmaster start time in microseconds since the epoch: as a number, not as
    /// `timestamptz` text, whose form depends on the session's `TimeZone` and `DateStyle`
    /// (the upstream URL may name another database or role, or carry `options=`).
    pub started: String,
    pub in_recovery: bool,
}

const IDENTITY_SQL: &str = "SELECT system_identifier::text, \
     (extract(epoch FROM pg_postmaster_start_time()) * 1000000)::bigint::text, \
     pg_is_in_recovery()::text FROM pg_control_system()";

pub async fn identity(client: &Client) -> Result<Identity> {
    let messages = client
        .simple_query(IDENTITY_SQL)
        .await
        .map_err(|err| anyhow!("{}", crate::conninfo::describe(&err)))?;
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            let field = |i: usize| row.get(i).unwrap_or("").to_string();
            return Ok(Identity {
                system_identifier: field(0),
                started: field(1),
                in_recovery: field(2) == "true",
            });
        }
    }
    bail!("identity query returned no row")
}

/// A fresh session to `server` and the identity it answers with, both within `bound`.
pub async fn identify(server: &Server, bound: Duration) -> Result<(Client, Identity)> {
    tokio::time::timeout(bound, async {
        let client = server.connect(bound).await?;
        let identity = identity(&client).await?;
        Ok((client, identity))
    })
    .await
    .map_err(|_| anyhow!("{}: no answer within {bound:?}", server.shown))?
}

/// Whether `upstream` is this very server, in the same state: writable when this member is
/// (a primary), in recovery when this member is (a standby leader, which RESUMEs without
/// promotion: its route leads to a server in recovery by design).
pub fn reaches(local: &Identity, upstream: &Identity) -> bool {
    upstream.in_recovery == local.in_recovery
        && upstream.system_identifier == local.system_identifier
        && upstream.started == local.started
}

/// Why `upstream` does not count as this member, for the log.
fn mismatch(local: &Identity, upstream: &Identity) -> &'static str {
    if upstream.system_identifier != local.system_identifier {
        "another cluster (system identifier differs)"
    } else if upstream.started != local.started {
        "another member of this cluster"
    } else if upstream.in_recovery {
        "this member, but in recovery"
    } else {
        "this member, but out of recovery"
    }
}

/// Fresh connections cost the upstream a login each: poll it no more often than this.
const MIN_ROUTE_POLL: Duration = Duration::from_millis(25);

/// Polls every upstream with a fresh connection each time (a pooled one would stick to the
/// old route) until each reaches this member in the state it is heading for (`writable`: a
/// promoted primary; else a standby leader), or `timeout` passes. It runs alongside the wait
/// for promotion, so a route that is already right costs nothing after it. Never fails: a
/// stale route is logged loudly and RESUME goes ahead, since a pause that never ends is worse.
pub async fn wait_for_route(
    local: &Server,
    writable: bool,
    upstreams: &[Server],
    poll: Duration,
    timeout: Duration,
) -> bool {
    let started = Instant::now();
    let deadline = started + timeout;
    let me = match identify(local, Duration::from_secs(5))
        .await
        .map(|(_, me)| me)
    {
        Ok(me) => Identity {
            in_recovery: !writable,
            ..me
        },
        Err(err) => {
            tracing::warn!(event = "route", action = "unchecked", "cannot tell the local Postgres' identity ({err:#}); RESUME without verifying the route");
            return false;
        }
    };
    let poll = poll.max(MIN_ROUTE_POLL);
    let max_polls = timeout.as_millis() / poll.as_millis() + 2;
    let mut pending: Vec<&Server> = upstreams.iter().collect();
    let mut last = String::from("not polled");
    for round in 0..max_polls {
        // The first round always runs; a later one only with time left, so the loud
        // message below names the last real answer, not a poll given no time at all.
        if round > 0 && Instant::now() >= deadline {
            break;
        }
        let mut still = Vec::new();
        for upstream in pending {
            let remaining = deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let seen = identify(upstream, remaining.min(Duration::from_secs(2)))
                .await
                .map(|(_, them)| them);
            match seen {
                Ok(them) if reaches(&me, &them) => {
                    tracing::info!(upstream = %upstream.shown, event = "route", action = "reached", route_ms = started.elapsed().as_millis() as u64, "route reaches this member");
                }
                Ok(them) => {
                    last = format!(
                        "{} answers from {} (in_recovery={})",
                        upstream.shown,
                        mismatch(&me, &them),
                        them.in_recovery
                    );
                    still.push(upstream);
                }
                Err(err) => {
                    last = format!("{err:#}");
                    still.push(upstream);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return true;
        }
        tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    tracing::error!(
        event = "route",
        action = "stale",
        "ROUTE STALE: after {timeout:?} the upstream still does not reach this member ({last}); RESUMING ANYWAY, PgBouncer may need server_login_retry to reconnect"
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sys: &str, started: &str, in_recovery: bool) -> Identity {
        Identity {
            system_identifier: sys.into(),
            started: started.into(),
            in_recovery,
        }
    }

    #[test]
    fn only_this_writable_server_counts() {
        let me = id("7", "t1", false);
        assert!(reaches(&me, &id("7", "t1", false)));
        assert!(!reaches(&me, &id("7", "t1", true)));
        assert!(
            !reaches(&me, &id("7", "t0", false)),
            "old primary of the same cluster"
        );
        assert!(!reaches(&me, &id("8", "t1", false)), "another cluster");
    }

    #[test]
    fn a_standby_leader_is_reached_in_recovery() {
        let me = id("7", "t1", true);
        assert!(reaches(&me, &id("7", "t1", true)));
        assert!(!reaches(&me, &id("7", "t0", true)), "another standby");
        assert!(!reaches(&me, &id("7", "t0", false)), "a primary elsewhere");
    }

    #[test]
    fn the_log_names_the_difference() {
        let me = id("7", "t1", false);
        assert!(mismatch(&me, &id("8", "t1", false)).contains("another cluster"));
        assert!(mismatch(&me, &id("7", "t0", false)).contains("another member"));
        assert!(mismatch(&me, &id("7", "t1", true)).contains("in recovery"));
    }
}
