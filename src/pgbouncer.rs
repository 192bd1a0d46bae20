//! A client for PgBouncer's admin console, and the URLs that name PgBouncers.
//!
//! The console speaks only the simple query protocol, rejects the `options` startup
//! parameter before 1.20, and answers every error with SQLSTATE 08P01, so outcomes are told
//! apart by message text. Dropping a connection while PAUSE drains leaves PgBouncer pausing
//! (that is what `before-stop` wants when its bound runs out); a CancelRequest on it resumes.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, SimpleQueryMessage};

use crate::conninfo::{describe, redact, strip_tls, tls_from, Tls};

/// One PgBouncer process to drive: a single address, never a name that resolves to several.
#[derive(Clone)]
pub struct Target {
    /// The URL as it may be logged: no password.
    pub shown: String,
    config: Config,
    /// TLS, and the host name the certificate is checked against (the URL's, not the address).
    tls: Option<(Tls, String)>,
}

impl Target {
    /// The same PgBouncer, with sessions named `application_name` (an ownership mark, see
    /// [`crate::owner`]).
    pub fn named(&self, application_name: &str) -> Target {
        let mut target = self.clone();
        target.config.application_name(application_name);
        target
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// A `--pgbouncer` URL, parsed but not resolved.
#[derive(Clone)]
pub struct Url {
    pub shown: String,
    config: Config,
    /// From the URL's own `sslmode`/`sslrootcert`, not `PGSSLMODE`: that variable in
    /// Patroni's environment is about its Postgres, not about PgBouncer's console.
    tls: Option<Tls>,
}

/// Debug shows the URL as it may be logged: never the password.
impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Url {
    pub fn parse(text: &str) -> Result<Url> {
        let tls = tls_from(text, None)?;
        let config = Config::from_str(&strip_tls(text)).map_err(|err| {
            anyhow!(
                "{:?} is not a PostgreSQL URL ({err}): expected e.g. postgresql://pgbouncer_admin@pgbouncer:6432/pgbouncer",
                redact(text)
            )
        })?;
        if config.get_hosts().is_empty() {
            bail!("{:?} names no host", redact(text));
        }
        let shown = show(&config, None);
        Ok(Url { shown, config, tls })
    }

    /// Every address the URL's hosts resolve to, each its own target.
    pub async fn resolve(&self, password: Option<&str>, timeout: Duration) -> Result<Vec<Target>> {
        let ports = self.config.get_ports();
        let mut targets = Vec::new();
        for (i, host) in self.config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => {
                    let addresses = crate::names::lookup(name, port, timeout)
                        .await
                        .context("cannot resolve PgBouncer host (check --pgbouncer)")?;
                    for ip in addresses {
                        let mut config = self.base(password);
                        config.host(ip.to_string()).port(port);
                        let label = (ip.to_string() != *name).then_some(name.as_str());
                        targets.push(Target {
                            shown: show(&config, label),
                            config,
                            tls: self.tls.clone().map(|tls| (tls, name.clone())),
                        });
                    }
                }
                #[cfg(unix)]
                Host::Unix(path) => {
                    let mut config = self.base(password);
                    config.host_path(path).port(port);
                    // libpq ignores sslmode on a socket path.
                    targets.push(Target {
                        shown: show(&config, None),
                        config,
                        tls: None,
                    });
                }
            }
        }
        Ok(targets)
    }

    fn base(&self, password: Option<&str>) -> Config {
        let mut config = Config::new();
        config
            .application_name(crate::owner::PLAIN)
            .dbname(self.config.get_dbname().unwrap_or("pgbouncer"))
            .ssl_mode(self.config.get_ssl_mode())
            .channel_binding(self.config.get_channel_binding());
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password().or(password.map(str::as_bytes)) {
            config.password(password);
        }
        config
    }
}

fn show(config: &Config, name: Option<&str>) -> String {
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) if h.contains(':') => format!("[{h}]"),
        Some(Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(Host::Unix(p)) => p.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or("pgbouncer");
    let via = name.map(|n| format!(" ({n})")).unwrap_or_default();
    format!("postgresql://{user}{host}:{port}/{db}{via}")
}

/// An open admin-console session.
pub struct Admin {
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Admin {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// What the admin console answered to PAUSE or RESUME.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Done,
    /// PAUSE on a paused PgBouncer, or RESUME on one that was not paused.
    AlreadyThere,
}

/// What is known after PAUSE was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Paused {
    Yes(Answer),
    /// The connection broke before PgBouncer answered: it may be pausing (the reason).
    Maybe(String),
}

/// `SHOW STATE`, PgBouncer >= 1.19.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct State {
    pub paused: bool,
    pub suspended: bool,
}

impl Admin {
    /// Connects and authenticates, bounded by `timeout`.
    pub async fn connect(target: &Target, timeout: Duration) -> Result<Admin> {
        let (tls, name) = match &target.tls {
            Some((tls, name)) => (Some(tls), Some(name.as_str())),
            None => (None, None),
        };
        let attempt = crate::tls::connect(&target.config, tls, name, timeout);
        let (client, connection) = match tokio::time::timeout(timeout, attempt).await {
            Err(_) => bail!(
                "{}: no answer within {timeout:?} (is PgBouncer up and reachable? raise --connect-timeout if it is just slow)",
                target.shown
            ),
            Ok(Err(text)) => return Err(connect_error(target, &text)),
            Ok(Ok(pair)) => pair,
        };
        Ok(Admin { client, connection })
    }

    async fn query(&self, sql: &str) -> Result<Vec<SimpleQueryMessage>, String> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|err| describe(&err))
    }

    /// PAUSE; waits for in-flight transactions with no bound of its own. An error that
    /// PgBouncer did not answer (the connection broke after PAUSE went out) is
    /// [`Paused::Maybe`]: PgBouncer may well be pausing.
    pub async fn pause(&self) -> Result<Paused> {
        match self.client.simple_query("PAUSE").await {
            Ok(_) => Ok(Paused::Yes(Answer::Done)),
            Err(err) => {
                let message = describe(&err);
                if err.as_db_error().is_none() {
                    Ok(Paused::Maybe(message))
                } else if message.contains("already suspended/paused") {
                    Ok(Paused::Yes(Answer::AlreadyThere))
                } else {
                    Err(admin_error("PAUSE", &message))
                }
            }
        }
    }

    pub async fn resume(&self) -> Result<Answer> {
        match self.query("RESUME").await {
            Ok(_) => Ok(Answer::Done),
            Err(m) if m.contains("not paused/suspended") => Ok(Answer::AlreadyThere),
            Err(m) => Err(admin_error("RESUME", &m)),
        }
    }

    /// The session ended (PgBouncer closed it, or went away).
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// `Ok(None)` when this PgBouncer has no `SHOW STATE` (before 1.19).
    pub async fn state(&self) -> Result<Option<State>> {
        match self.query("SHOW STATE").await {
            Ok(messages) => parse_state(&messages).map(Some),
            Err(m)
                if m.contains("unknown") || m.contains("unsupported") || m.contains("invalid") =>
            {
                Ok(None)
            }
            Err(m) => Err(admin_error("SHOW STATE", &m)),
        }
    }

    pub async fn version(&self) -> Result<String> {
        let messages = self
            .query("SHOW VERSION")
            .await
            .map_err(|m| admin_error("SHOW VERSION", &m))?;
        rows(&messages)
            .into_iter()
            .find_map(|row| row.into_iter().next())
            .ok_or_else(|| anyhow!("SHOW VERSION returned no row"))
    }

    /// The `application_name` of every admin-console session (`SHOW CLIENTS`, database
    /// `pgbouncer`): who may own a pause ([`crate::owner`]). Read by column name.
    pub async fn admin_sessions(&self) -> Result<Vec<String>> {
        let messages = self
            .query("SHOW CLIENTS")
            .await
            .map_err(|m| admin_error("SHOW CLIENTS", &m))?;
        let mut names = Vec::new();
        for message in &messages {
            let SimpleQueryMessage::Row(row) = message else {
                continue;
            };
            let column = |name: &str| {
                row.columns()
                    .iter()
                    .position(|c| c.name() == name)
                    .and_then(|i| row.get(i))
            };
            let Some(application_name) = column("application_name") else {
                bail!("SHOW CLIENTS has no application_name column (PgBouncer < 1.18)");
            };
            if column("database") == Some("pgbouncer") {
                names.push(application_name.to_string());
            }
        }
        Ok(names)
    }

    /// Who owns the pause, from the admin sessions connected now.
    pub async fn owner(&self) -> Result<crate::owner::Owner> {
        Ok(crate::owner::owner(&self.admin_sessions().await?))
    }

    /// `SHOW CONFIG` as key/value pairs.
    pub async fn config(&self) -> Result<Vec<(String, String)>> {
        let messages = self
            .query("SHOW CONFIG")
            .await
            .map_err(|m| admin_error("SHOW CONFIG", &m))?;
        Ok(rows(&messages)
            .into_iter()
            .filter_map(|row| {
                let mut fields = row.into_iter();
                Some((fields.next()?, fields.next()?))
            })
            .collect())
    }
}

fn rows(messages: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// `SHOW STATE` prints `key | value` rows: active, paused, suspended.
fn parse_state(messages: &[SimpleQueryMessage]) -> Result<State> {
    let rows = rows(messages);
    let flag = |key: &str| -> Result<bool> {
        let row = rows
            .iter()
            .find(|row| row.first().map(String::as_str) == Some(key))
            .ok_or_else(|| anyhow!("SHOW STATE has no {key:?} row"))?;
        match row.get(1).map(String::as_str) {
            Some("yes") => Ok(true),
            Some("no") => Ok(false),
            other => bail!("SHOW STATE says {key} = {other:?}"),
        }
    };
    Ok(State {
        paused: flag("paused")?,
        suspended: flag("suspended")?,
    })
}

fn connect_error(target: &Target, text: &str) -> anyhow::Error {
    let hint = if text.contains("TLS") || text.contains("sslrootcert") {
        "check sslmode/sslrootcert in --pgbouncer against PgBouncer's client_tls_* settings"
    } else if text.contains("no encryption") || text.contains("SSL required") {
        "the console requires TLS: add sslmode=verify-full&sslrootcert=/path/to/ca.crt (or sslmode=require) to --pgbouncer"
    } else if text.contains("password authentication failed")
        || text.contains("SASL authentication failed")
        || text.contains("password missing")
        || text.contains("no such user")
    {
        "check the admin user and PGBOUNCER_PASSWORD / PGBOUNCER_PASSWORD_FILE"
    } else if text.contains("not allowed") || text.contains("no such database") {
        "connect to the `pgbouncer` database as a user listed in admin_users"
    } else if text.contains("refused") {
        "is PgBouncer running there? check --pgbouncer"
    } else {
        "check --pgbouncer and that PgBouncer is reachable"
    };
    anyhow!("{}: {text} ({hint})", target.shown)
}

fn admin_error(command: &str, message: &str) -> anyhow::Error {
    let hint = if message.contains("admin access needed") {
        " (the user must be in PgBouncer's admin_users)"
    } else {
        ""
    };
    anyhow!("{command} failed: {message}{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conninfo::split_url_list;

    #[test]
    fn redaction() {
        let table = [
            (
                "postgresql://admin:s3cret@pgb:6432/pgbouncer",
                "postgresql://admin:***@pgb:6432/pgbouncer",
            ),
            (
                "postgresql://admin@pgb/pgbouncer",
                "postgresql://admin@pgb/pgbouncer",
            ),
            ("postgres://a:b:c@h", "postgres://a:***@h"),
            ("host=h password=x user=u", "host=h password=*** user=u"),
            (
                "postgresql://admin@pgb/pgbouncer?password=s3cret&sslmode=disable",
                "postgresql://admin@pgb/pgbouncer?password=***&sslmode=disable",
            ),
            (
                "postgresql://pgb/pgbouncer?user=a&PASSWORD=s3cret",
                "postgresql://pgb/pgbouncer?user=a&PASSWORD=***",
            ),
            (
                "host=h password = s3cret user=u",
                "host=h password = *** user=u",
            ),
            (
                "host=h password='a b\\' c' user=u",
                "host=h password=*** user=u",
            ),
            ("password=s3cret", "password=***"),
            ("host='x y' password=''", "host='x y' password=***"),
        ];
        for (url, shown) in table {
            assert_eq!(redact(url), shown);
        }
    }

    #[test]
    fn shown_urls_never_carry_the_password() {
        let url = Url::parse("postgresql://admin:s3cret@127.0.0.1:6432/pgbouncer").unwrap();
        assert!(!url.shown.contains("s3cret"), "{}", url.shown);
        assert_eq!(url.config.get_password(), Some(&b"s3cret"[..]));
        let err = Url::parse("postgresql://admin:s3cret@h:notaport/pgbouncer")
            .err()
            .unwrap();
        assert!(!format!("{err:#}").contains("s3cret"), "{err:#}");
    }

    #[test]
    fn url_lists_split_only_where_a_url_starts() {
        let table: [(&str, &[&str]); 5] = [
            (
                "postgresql://a@h1/pgbouncer",
                &["postgresql://a@h1/pgbouncer"],
            ),
            (
                "postgresql://a@h1/pgbouncer, postgres://a@h2/pgbouncer",
                &["postgresql://a@h1/pgbouncer", "postgres://a@h2/pgbouncer"],
            ),
            // A comma in the password, and a multi-host URL.
            (
                "postgresql://a:x,y@h1/pgbouncer,postgresql://a@h2:6432,h3:6432/pgbouncer",
                &[
                    "postgresql://a:x,y@h1/pgbouncer",
                    "postgresql://a@h2:6432,h3:6432/pgbouncer",
                ],
            ),
            ("", &[]),
            (" , postgresql://h ,", &["postgresql://h"]),
        ];
        for (text, want) in table {
            assert_eq!(split_url_list(text), want, "{text:?}");
        }
        let url = Url::parse("postgresql://a:x,y@127.0.0.1:6432/pgbouncer").unwrap();
        assert_eq!(url.config.get_password(), Some(&b"x,y"[..]));
    }

    #[test]
    fn tls_settings_come_from_the_url_and_are_never_dropped() {
        use crate::conninfo::Check;
        let check = |text: &str| Url::parse(text).unwrap().tls.map(|t| t.check);
        assert_eq!(check("postgresql://a@h/pgbouncer?sslmode=prefer"), None);
        assert_eq!(check("postgresql://a@h/pgbouncer"), None);
        assert_eq!(
            check("postgresql://a@h/pgbouncer?sslmode=require"),
            Some(Check::Encrypt)
        );
        let url = Url::parse(
            "postgresql://a@h/pgbouncer?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt&application_name=x",
        )
        .unwrap();
        let tls = url.tls.clone().unwrap();
        assert_eq!(tls.check, Check::ChainAndName);
        assert_eq!(
            tls.rootcert.as_deref(),
            Some(std::path::Path::new("/etc/ca.crt"))
        );
        assert_eq!(url.config.get_application_name(), Some("x"));
        for text in [
            "postgresql://a:s3cret@h/pgbouncer?sslmode=verify-full",
            "host=h sslmode=verify-ca password=s3cret",
            "postgresql://a:s3cret@h/pgbouncer?channel_binding=require",
            "postgresql://a:s3cret@h/pgbouncer?sslmode=verify-everything",
        ] {
            let err = Url::parse(text).expect_err(text);
            let line = format!("{err:#}");
            assert!(!line.contains("s3cret"), "{line}");
            assert!(
                line.contains("sslmode") || line.contains("channel_binding"),
                "{line}"
            );
        }
    }

    #[test]
    fn default_database_is_the_admin_console() {
        let url = Url::parse("postgresql://admin@127.0.0.1:6432").unwrap();
        assert_eq!(url.shown, "postgresql://admin@127.0.0.1:6432/pgbouncer");
    }

    #[tokio::test]
    async fn a_target_is_dialled_by_address_and_its_certificate_checked_by_name() {
        let url = Url::parse(
            "postgresql://admin@localhost:6432/pgbouncer?sslmode=verify-full&sslrootcert=/ca.crt",
        )
        .unwrap();
        let targets = url.resolve(None, Duration::from_secs(5)).await.unwrap();
        assert!(!targets.is_empty());
        for target in targets {
            assert!(
                matches!(target.config.get_hosts(), [Host::Tcp(ip)] if ip.parse::<std::net::IpAddr>().is_ok())
            );
            assert_eq!(
                target.tls.map(|(_, name)| name).as_deref(),
                Some("localhost")
            );
        }
        let socket = Url::parse("postgresql://admin@%2Frun%2Fpgb:6432/pgbouncer?sslmode=require")
            .unwrap()
            .resolve(None, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(socket[0].tls.is_none(), "libpq ignores sslmode on a socket");
    }

    #[tokio::test]
    async fn literal_addresses_resolve_without_dns() {
        let url = Url::parse("postgresql://admin@127.0.0.1:6432,[::1]:6433/pgbouncer").unwrap();
        let targets = url.resolve(None, Duration::from_secs(1)).await.unwrap();
        let shown: Vec<&str> = targets.iter().map(|t| t.shown.as_str()).collect();
        assert_eq!(
            shown,
            [
                "postgresql://admin@127.0.0.1:6432/pgbouncer",
                "postgresql://admin@[::1]:6433/pgbouncer"
            ]
        );
    }

    #[tokio::test]
    async fn localhost_may_be_several_targets() {
        let url = Url::parse("postgresql://admin@localhost:6432/pgbouncer").unwrap();
        let targets = url.resolve(None, Duration::from_secs(2)).await.unwrap();
        assert!(!targets.is_empty());
        assert!(
            targets.iter().all(|t| t.shown.ends_with("(localhost)")),
            "{targets:?}"
        );
    }
}
