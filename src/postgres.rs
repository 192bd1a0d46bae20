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
use tokio_postgres::config::ChannelBinding;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use crate::conninfo::{describe, strip_tls, tls_from, Tls};

/// A Postgres server to ask (this member's own, or an upstream address that PgBouncer uses),
/// with a printable form that never holds the password.
#[derive(Clone)]
pub struct Server {
    pub shown: String,
    pub config: Config,
    /// TLS for TCP hosts; `None` for plaintext and for socket paths (libpq ignores `sslmode` there).
    pub tls: Option<Tls>,
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
    /// `--postgres URL`, else `PGHOST`, `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD`,
    /// `PGPASSFILE`; TLS from the URL's `sslmode`/`sslrootcert`/`channel_binding`, else
    /// `PGSSLMODE`, `PGSSLROOTCERT`, `PGCHANNELBINDING`.
    pub fn from_url_or_env(url: Option<&str>, env: &Env) -> Result<Server> {
        let mut config = match url {
            Some(url) => Config::from_str(&strip_tls(url)).map_err(|err| {
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
        // TLS (libpq's rules, src/conninfo.rs) for TCP hosts; a socket path ignores it, as
        // in libpq, so PGSSLMODE=require in Patroni's environment leaves the socket alone.
        let tcp = config.get_hosts().iter().any(|h| matches!(h, Host::Tcp(_)));
        let tls = match tcp {
            true => tls_from(url.unwrap_or(""), Some(env))?,
            false => None,
        };
        let url_says = |key: &str| url.is_some_and(|u| u.contains(key));
        if !url_says("channel_binding") {
            match env("PGCHANNELBINDING").as_deref() {
                Some("disable") => config.channel_binding(ChannelBinding::Disable),
                Some("require") if tcp => config.channel_binding(ChannelBinding::Require),
                _ => &mut config,
            };
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
        Ok(Server { shown, config, tls })
    }

    pub async fn connect(&self, timeout: Duration) -> Result<Client> {
        let config = crate::names::pinned(&self.config, timeout).await?;
        let attempt = crate::tls::connect(&config, self.tls.as_ref(), None, timeout);
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => bail!("{}: no answer within {timeout:?}", self.shown),
            Ok(Err(text)) if text.contains("no encryption") => bail!(
                "{}: {text} (the server accepts only TLS here: add sslmode=require, or verify-full with sslrootcert)",
                self.shown
            ),
            Ok(Err(text)) => bail!("{}: {text}", self.shown),
            Ok(Ok((client, _connection))) => Ok(client),
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
    fn tls_from_url_or_variables_and_never_on_a_socket() {
        use crate::conninfo::Check;
        let tls = |url: Option<&str>, vars: &[(&str, &str)]| {
            Server::from_url_or_env(url, &env(vars))
                .map(|s| s.tls.map(|t| (t.check, t.rootcert)))
                .map_err(|e| format!("{e:#}"))
        };
        let ca = Some(PathBuf::from("/ca.crt"));
        assert_eq!(
            tls(Some("postgresql://u:pw@h/db?sslmode=require"), &[]),
            Ok(Some((Check::Encrypt, None)))
        );
        // libpq: require with a root certificate verifies the chain.
        assert_eq!(
            tls(
                Some("postgresql://u@h/db?sslmode=require"),
                &[("PGSSLROOTCERT", "/ca.crt")]
            ),
            Ok(Some((Check::Chain, ca.clone())))
        );
        assert_eq!(
            tls(
                None,
                &[
                    ("PGHOST", "db.example"),
                    ("PGSSLMODE", "verify-full"),
                    ("PGSSLROOTCERT", "/ca.crt")
                ]
            ),
            Ok(Some((Check::ChainAndName, ca.clone())))
        );
        // The URL wins over the variable.
        assert_eq!(
            tls(
                Some("postgresql://u@h/db?sslmode=disable"),
                &[("PGSSLMODE", "verify-full")]
            ),
            Ok(None)
        );
        // A socket path ignores sslmode, as in libpq (Patroni's PGSSLMODE=require).
        assert_eq!(
            tls(None, &[("PGHOST", "/run/pg"), ("PGSSLMODE", "require")]),
            Ok(None)
        );
        assert_eq!(
            tls(None, &[("PGHOST", "/run/pg"), ("PGSSLMODE", "verify-full")]),
            Ok(None)
        );
        let err = tls(Some("postgresql://u:pw@h/db?sslmode=verify-full"), &[]).unwrap_err();
        assert!(err.contains("sslrootcert") && !err.contains("pw@"), "{err}");
        let err = tls(None, &[("PGHOST", "h"), ("PGSSLMODE", "verify-ca")]).unwrap_err();
        assert!(
            err.starts_with("PGSSLMODE=verify-ca needs the CA file"),
            "{err}"
        );
        let err = tls(None, &[("PGHOST", "h"), ("PGCHANNELBINDING", "require")]).unwrap_err();
        assert!(
            err.starts_with("PGCHANNELBINDING=require needs TLS"),
            "{err}"
        );
        assert_eq!(
            tls(Some("postgresql://h/db?sslmode=prefer"), &[]),
            Ok(None),
            "prefer stays plaintext"
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
