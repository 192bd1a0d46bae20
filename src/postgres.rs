//! The local Postgres probe: is this member's Postgres out of recovery yet?
//!
//! Patroni fires `on_role_change` right after `pg_ctl promote`, before promotion ends; a
//! RESUME then would send the queued transactions to a server that still refuses writes.
//! The connection is found the way libpq finds it (URL, else `PG*` variables and the
//! password file) because that is what a DBA configured for `psql` on the member already.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio_postgres::config::Host;
use tokio_postgres::config::{ChannelBinding, SslMode};
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

use crate::conninfo::{describe, refuse_tls, refuse_tls_settings};

/// A Postgres server to ask (this member's own, or an upstream address that PgBouncer uses),
/// with a printable form that never holds the password.
#[derive(Clone)]
pub struct Server {
    pub shown: String,
    pub config: Config,
}

/// Variables the way libpq reads them; passed in so tests need not touch the process env.
pub type Env = dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `--upstream` URLs (each may be a comma-separated list) as servers, credentials found as
/// libpq finds them; a bad URL is a usage error.
pub fn upstreams(urls: &[String]) -> Result<Vec<Server>> {
    urls.iter()
        .flat_map(|u| crate::conninfo::split_url_list(u))
        .map(|u| {
            Server::from_url_or_env(Some(&u), &process_env)
                .map_err(|e| crate::config::usage(format!("--upstream: {e:#}")))
        })
        .collect()
}

impl Server {
    /// `--postgres URL`, else `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`.
    pub fn from_url_or_env(url: Option<&str>, env: &Env) -> Result<Server> {
        if let Some(url) = url {
            refuse_tls(url)?;
        }
        let mut config = match url {
            Some(url) => Config::from_str(url).map_err(|err| {
                anyhow!(
                    "--postgres {:?} is not a PostgreSQL URL: {err}",
                    crate::conninfo::redact(url)
                )
            })?,
            None => Config::new(),
        };
        if config.get_hosts().is_empty() {
            let hosts = env("PGHOST").unwrap_or_else(|| {
                if Path::new("/var/run/postgresql").is_dir() {
                    "/var/run/postgresql".to_string()
                } else {
                    "localhost".to_string()
                }
            });
            for host in hosts.split(',') {
                if host.starts_with('/') {
                    config.host_path(host);
                } else {
                    config.host(host);
                }
            }
        }
        if config.get_ports().is_empty() {
            let port = env("PGPORT").unwrap_or_else(|| "5432".into());
            let port: u16 = port
                .parse()
                .map_err(|_| anyhow!("PGPORT={port:?} is not a port number"))?;
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .or_else(|| env("LOGNAME"))
                .unwrap_or_else(|| "postgres".into());
            config.user(&user);
        }
        if config.get_dbname().is_none() {
            let db = env("PGDATABASE")
                .unwrap_or_else(|| config.get_user().unwrap_or("postgres").to_string());
            config.dbname(&db);
        }
        // libpq's PGSSLMODE / PGCHANNELBINDING, when the URL does not say: honoured where
        // plaintext is allowed, refused where TLS is required.
        let url_says = |key: &str| url.is_some_and(|u| u.contains(key));
        if !url_says("sslmode") {
            let mode = env("PGSSLMODE");
            refuse_tls_settings(mode.as_deref(), None)
                .map_err(|why| anyhow!("PGSSLMODE: {why}"))?;
            if mode.as_deref() == Some("disable") {
                config.ssl_mode(SslMode::Disable);
            }
        }
        if !url_says("channel_binding") {
            let binding = env("PGCHANNELBINDING");
            refuse_tls_settings(None, binding.as_deref())
                .map_err(|why| anyhow!("PGCHANNELBINDING: {why}"))?;
            if binding.as_deref() == Some("disable") {
                config.channel_binding(ChannelBinding::Disable);
            }
        }
        if config.get_password().is_none() {
            if let Some(password) = env("PGPASSWORD") {
                config.password(password);
            } else {
                let file = env("PGPASSFILE")
                    .map(PathBuf::from)
                    .or_else(|| env("HOME").map(|home| Path::new(&home).join(".pgpass")));
                if let Some(password) = file.and_then(|f| password_from_file(&f, &config)) {
                    config.password(password);
                }
            }
        }
        let shown = show(&config);
        Ok(Server { shown, config })
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let config = crate::names::pinned(&self.config, timeout).await?;
        let attempt = async {
            let mut config = config;
            config.connect_timeout(timeout);
            config.connect(NoTls).await
        };
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => bail!("{}: no answer within {timeout:?}", self.shown),
            Ok(Err(err)) => bail!("{}: {}", self.shown, describe(&err)),
            Ok(Ok((client, connection))) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                Ok(client)
            }
        }
    }
}

fn show(config: &Config) -> String {
    let user = config.get_user().unwrap_or("");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    format!(
        "postgresql://{user}@{host}:{port}/{}",
        config.get_dbname().unwrap_or("")
    )
}

/// Looks the password up in a `.pgpass` file the way libpq does: first matching line wins.
fn password_from_file(path: &Path, config: &Config) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let host = match config.get_hosts().first()? {
        Host::Tcp(h) => h.clone(),
        #[cfg(unix)]
        Host::Unix(p) => p.display().to_string(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config.get_dbname().unwrap_or("");
    let user = config.get_user().unwrap_or("");
    pgpass_lookup(&text, &host, &port, db, user)
}

/// One `.pgpass` line is `host:port:database:user:password`; `*` matches anything and
/// `\:` / `\\` escape. A socket directory also matches `localhost`, as in libpq.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        let host_matches =
            matches(&fields[0], host) || (host.starts_with('/') && fields[0] == "localhost");
        if host_matches
            && matches(&fields[1], port)
            && matches(&fields[2], db)
            && matches(&fields[3], user)
        {
            return Some(fields[4].clone());
        }
    }
    None
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().unwrap().push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Asks `SELECT pg_is_in_recovery()`; `Ok(true)` while the server is a standby.
pub async fn in_recovery(client: &Client) -> Result<bool> {
    let messages = client
        .simple_query("SELECT pg_is_in_recovery()")
        .await
        .map_err(|err| anyhow!("{}", describe(&err)))?;
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            return match row.get(0) {
                Some("t") => Ok(true),
                Some("f") => Ok(false),
                other => bail!("pg_is_in_recovery() answered {other:?}"),
            };
        }
    }
    bail!("pg_is_in_recovery() returned no row")
}

/// How long to wait before the next login after `failures` failed ones in a row. A server
/// that is starting or stopping answers so for a moment: ask again at the poll interval. Any
/// other refusal (a wrong password, no pg_hba.conf entry, nothing listening) will not fix
/// itself within milliseconds, and each try is a line in the server's log: back off,
/// doubling up to a second.
pub fn retry_delay(poll: Duration, failures: u32, problem: &str) -> Duration {
    const TRANSIENT: [&str; 3] = [
        "the database system is starting up",
        "the database system is shutting down",
        "the database system is not yet accepting connections",
    ];
    if TRANSIENT.iter().any(|t| problem.contains(t)) {
        return poll;
    }
    let doubled = poll.saturating_mul(1 << failures.min(16));
    doubled.min(Duration::from_secs(1)).max(poll)
}

/// Polls the local Postgres until it leaves recovery, over one connection that is re-opened
/// only when it breaks (the server may restart during promotion). Sleeps `poll` between
/// tries, so it never spins, and gives up at `timeout`.
pub async fn wait_until_primary(local: &Server, poll: Duration, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let poll = poll.max(Duration::from_millis(1));
    let max_polls = (timeout.as_millis() / poll.as_millis()).min(u32::MAX as u128 - 2) as u32 + 2;
    let mut client: Option<Client> = None;
    let mut last_problem = String::from("never asked");
    let mut polls = 0;
    let mut failed_logins = 0;
    while polls < max_polls {
        polls += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        let mut pause = poll;
        if client.is_none() {
            match local.connect(remaining.min(Duration::from_secs(5))).await {
                Ok(c) => {
                    client = Some(c);
                    failed_logins = 0;
                }
                Err(err) => {
                    last_problem = format!("{err:#}");
                    if failed_logins == 0 {
                        tracing::warn!("local Postgres refused the first login: {last_problem}");
                    }
                    failed_logins += 1;
                    pause = retry_delay(poll, failed_logins, &last_problem);
                }
            }
        }
        if let Some(c) = &client {
            match tokio::time::timeout(remaining, in_recovery(c)).await {
                Ok(Ok(false)) => return Ok(()),
                Ok(Ok(true)) => last_problem = "still in recovery".into(),
                Ok(Err(err)) => {
                    last_problem = format!("{err:#}");
                    client = None;
                }
                Err(_) => {
                    last_problem = "pg_is_in_recovery() did not answer".into();
                    client = None;
                }
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(pause.min(remaining)).await;
    }
    bail!(
        "{} did not leave recovery within {timeout:?} (last: {last_problem}); raise --promote-timeout if promotion is just slow",
        local.shown
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn libpq_variables() {
        let local = Server::from_url_or_env(
            None,
            &env(&[
                ("PGHOST", "/run/pg"),
                ("PGPORT", "5433"),
                ("PGUSER", "u"),
                ("PGPASSWORD", "pw"),
            ]),
        )
        .unwrap();
        assert_eq!(local.shown, "postgresql://u@/run/pg:5433/u");
        assert_eq!(local.config.get_password(), Some(&b"pw"[..]));
        assert!(!local.shown.contains("pw"));
    }

    #[test]
    fn url_wins_over_variables() {
        let local = Server::from_url_or_env(
            Some("postgresql://a@127.0.0.1:6000/db"),
            &env(&[("PGHOST", "/run/pg"), ("PGPORT", "5433")]),
        )
        .unwrap();
        assert_eq!(local.shown, "postgresql://a@127.0.0.1:6000/db");
    }

    #[test]
    fn bad_port_is_named() {
        let err = Server::from_url_or_env(None, &env(&[("PGPORT", "x")]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("PGPORT=\"x\""), "{err}");
    }

    #[test]
    fn required_tls_is_refused_from_url_or_variables() {
        let err = |url: Option<&str>, vars: &[(&str, &str)]| {
            Server::from_url_or_env(url, &env(vars))
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(err(Some("postgresql://u:pw@h/db?sslmode=require"), &[]).contains("needs TLS"));
        assert!(!err(Some("postgresql://u:pw@h/db?sslmode=require"), &[]).contains("pw@"));
        assert!(err(None, &[("PGSSLMODE", "verify-full")]).contains("PGSSLMODE"));
        assert!(err(None, &[("PGCHANNELBINDING", "require")]).contains("PGCHANNELBINDING"));
        let local = Server::from_url_or_env(None, &env(&[("PGSSLMODE", "disable")])).unwrap();
        assert_eq!(local.config.get_ssl_mode(), SslMode::Disable);
        assert!(
            Server::from_url_or_env(Some("postgresql://h/db?sslmode=prefer"), &env(&[])).is_ok()
        );
    }

    #[test]
    fn failed_logins_back_off_unless_the_server_is_just_starting() {
        let poll = Duration::from_millis(10);
        let ms = |failures, problem| retry_delay(poll, failures, problem).as_millis();
        let auth = "password authentication failed for user \"u\"";
        assert_eq!(ms(1, auth), 20);
        assert_eq!(ms(2, auth), 40);
        assert_eq!(ms(7, auth), 1000);
        assert_eq!(ms(1000, auth), 1000);
        assert_eq!(ms(3, "Connection refused (os error 111)"), 80);
        assert_eq!(ms(9, "the database system is starting up"), 10);
        // In 60 s of a wrong password: about 65 logins, not 4,000.
        let (mut spent, mut tries) = (Duration::ZERO, 0);
        while spent < Duration::from_secs(60) {
            tries += 1;
            spent += retry_delay(poll, tries, auth);
        }
        assert!(tries < 70, "{tries} logins");
        // A poll interval longer than the cap is kept.
        assert_eq!(
            retry_delay(Duration::from_secs(2), 5, auth),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn pgpass_rules() {
        let file = "# comment\nother:5432:*:u:no\n*:5432:db:u:yes\\:colon\nlocalhost:*:*:*:sock\n";
        assert_eq!(
            pgpass_lookup(file, "h", "5432", "db", "u").as_deref(),
            Some("yes:colon")
        );
        assert_eq!(
            pgpass_lookup(file, "other", "5432", "x", "u").as_deref(),
            Some("no")
        );
        assert_eq!(
            pgpass_lookup(file, "/run/pg", "1", "x", "v").as_deref(),
            Some("sock")
        );
        assert_eq!(pgpass_lookup(file, "h", "1", "x", "v"), None);
    }
}
