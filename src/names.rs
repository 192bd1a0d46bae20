//! Host names to addresses. Normally tokio's lookup, which runs getaddrinfo on a blocking
//! thread, bounded by a timeout. In a process that cannot start threads (on-role-change's
//! in-process fallback: the pids limit that refused the fork refuses a thread too, and tokio
//! would panic) the lookup runs in place instead, on the one thread there is.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

static IN_PLACE: AtomicBool = AtomicBool::new(false);

/// From now on, look names up on the calling thread (no thread can be started).
pub fn look_up_in_place() {
    IN_PLACE.store(true, Ordering::SeqCst);
}

fn in_place() -> bool {
    IN_PLACE.load(Ordering::SeqCst)
}

/// Every address `name` resolves to (sorted, distinct); an IP literal is itself.
pub async fn lookup(name: &str, port: u16, timeout: Duration) -> Result<Vec<IpAddr>> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut ips: Vec<IpAddr> = if in_place() {
        (name, port)
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {name:?}"))?
            .map(|a| a.ip())
            .collect()
    } else {
        tokio::time::timeout(timeout, tokio::net::lookup_host((name, port)))
            .await
            .map_err(|_| anyhow!("resolving {name} took longer than {timeout:?}"))?
            .with_context(|| format!("cannot resolve {name:?}"))?
            .map(|a| a.ip())
            .collect()
    };
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// `config`, ready to connect without a thread: where names must be looked up in place, the
/// first TCP host's address is given as `hostaddr`, so the driver does no lookup of its own.
pub async fn pinned(config: &Config, timeout: Duration) -> Result<Config> {
    let mut config = config.clone();
    if !in_place() || !config.get_hostaddrs().is_empty() {
        return Ok(config);
    }
    if let Some(Host::Tcp(name)) = config.get_hosts().first().cloned() {
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let ip = lookup(&name, port, timeout)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| anyhow!("{name:?} resolves to no address"))?;
        config.hostaddr(ip);
    }
    Ok(config)
}
