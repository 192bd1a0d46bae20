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
use tokio_postgres::{Client, Config, NoTls, SimpleQueryMessage};

/// Where the local Postgres is, with a printable form that never holds the password.
#[derive(Clone)]
pub struct Local {
    pub shown: String,
    pub config: Config,
}

/// Variables the way libpq reads them; passed in so tests need not touch the process env.
pub type Env = dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Local {
    /// `--postgres URL`, else `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`, `PGPASSFILE`.
    pub fn from_url_or_env(url: Option<&str>, env: &Env) -> Result<Local> {
        let mut config = match url {
            Some(url) => Config::from_str(url).map_err(|err| {
                anyhow!(
                    "--postgres {:?} is not a PostgreSQL URL: {err}",
                    crate::pgbouncer::redact(url)
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
        Ok(Local { shown, config })
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let attempt = async {
            let mut config = self.config.clone();
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

/// The error's own words: a server message when there is one, else the I/O cause.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return db.message().to_string();
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let words = cause.to_string();
        if !text.contains(&words) {
            text = format!("{text}: {words}");
        }
        source = cause.source();
    }
    text
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

/// How the wait for promotion went.
#[derive(Debug)]
pub struct Waited {
    pub polls: u32,
    pub elapsed: Duration,
}

/// Polls the local Postgres until it leaves recovery, over one connection that is re-opened
/// only when it breaks (the server may restart during promotion). Sleeps `poll` between
/// tries, so it never spins, and gives up at `timeout`.
pub async fn wait_until_primary(
    local: &Local,
    poll: Duration,
    timeout: Duration,
) -> Result<Waited> {
    let started = Instant::now();
    let deadline = started + timeout;
    let poll = poll.max(Duration::from_millis(1));
    let max_polls = (timeout.as_millis() / poll.as_millis()).min(u32::MAX as u128 - 2) as u32 + 2;
    let mut client: Option<Client> = None;
    let mut last_problem = String::from("never asked");
    let mut polls = 0;
    while polls < max_polls {
        polls += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        if client.is_none() {
            match local.connect(remaining.min(Duration::from_secs(5))).await {
                Ok(c) => client = Some(c),
                Err(err) => {
                    tracing::debug!(error = %format!("{err:#}"), "local Postgres not reachable yet");
                    last_problem = format!("{err:#}");
                }
            }
        }
        if let Some(c) = &client {
            match tokio::time::timeout(remaining, in_recovery(c)).await {
                Ok(Ok(false)) => {
                    return Ok(Waited {
                        polls,
                        elapsed: started.elapsed(),
                    })
                }
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
        tokio::time::sleep(poll.min(remaining)).await;
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
        let local = Local::from_url_or_env(
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
        let local = Local::from_url_or_env(
            Some("postgresql://a@127.0.0.1:6000/db"),
            &env(&[("PGHOST", "/run/pg"), ("PGPORT", "5433")]),
        )
        .unwrap();
        assert_eq!(local.shown, "postgresql://a@127.0.0.1:6000/db");
    }

    #[test]
    fn bad_port_is_named() {
        let err = Local::from_url_or_env(None, &env(&[("PGPORT", "x")]))
            .err()
            .unwrap();
        assert!(err.to_string().contains("PGPORT=\"x\""), "{err}");
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
