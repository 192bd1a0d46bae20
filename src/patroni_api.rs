//! A faster source of the same facts as `patronictl list` / `history`: the local Patroni's
//! REST API (`GET /cluster`, `GET /history`), which answers in milliseconds where each
//! patronictl run pays a Python start-up. Plain HTTP only; TLS-protected APIs use patronictl.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::patronictl::{Member, Role, Switch};

/// `http://host:port` split into what a GET needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Api {
    pub host: String,
    pub port: u16,
}

impl Api {
    pub fn parse(url: &str) -> Result<Api> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow!("--patroni-url {url:?}: only http:// is supported (for https use patronictl)")
        })?;
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            bail!("--patroni-url must not carry credentials: GET /cluster and /history need none");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port
                    .parse()
                    .map_err(|_| anyhow!("--patroni-url {url:?}: bad port {port:?}"))?;
                (host.trim_matches(['[', ']']).to_string(), port)
            }
            _ => (authority.trim_matches(['[', ']']).to_string(), 8008),
        };
        if host.is_empty() {
            bail!("--patroni-url {url:?} names no host");
        }
        Ok(Api { host, port })
    }

    /// Both views, fetched concurrently, each bounded by `timeout`.
    pub async fn view(&self, timeout: Duration) -> Result<(Vec<Member>, Vec<Switch>)> {
        let (cluster, history) =
            tokio::join!(self.get("/cluster", timeout), self.get("/history", timeout));
        Ok((parse_cluster(&cluster?)?, parse_history(&history?)?))
    }

    /// `GET path`: the body of a 200 answer.
    pub async fn get(&self, path: &str, timeout: Duration) -> Result<String> {
        let shown = format!("http://{}:{}{path}", self.host, self.port);
        let request = async {
            let mut stream =
                tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await?;
            let head = format!(
                "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
                self.host, self.port
            );
            stream.write_all(head.as_bytes()).await?;
            let mut response = Vec::new();
            stream
                .take(16 * 1024 * 1024)
                .read_to_end(&mut response)
                .await?;
            Ok::<_, std::io::Error>(response)
        };
        let response = tokio::time::timeout(timeout, request)
            .await
            .map_err(|_| anyhow!("{shown} did not answer within {timeout:?}"))?
            .with_context(|| format!("{shown} failed"))?;
        body(&response).with_context(|| shown)
    }
}

/// The body of a `Connection: close` HTTP/1.x response with status 200.
fn body(response: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("not an HTTP response"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("answered {status:?}");
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("answered with a chunked body, which this client does not read");
    }
    Ok(body.to_string())
}

#[derive(Deserialize)]
struct Cluster {
    #[serde(default)]
    members: Vec<ApiMember>,
}

#[derive(Deserialize)]
struct ApiMember {
    name: String,
    role: String,
    #[serde(default)]
    state: String,
}

/// `GET /cluster` (`cluster_as_json`): roles are `leader`, `standby_leader`, `sync_standby`, `quorum_standby`, `replica`.
pub fn parse_cluster(json: &str) -> Result<Vec<Member>> {
    let cluster: Cluster =
        serde_json::from_str(json).context("GET /cluster is not the JSON Patroni sends")?;
    cluster
        .members
        .into_iter()
        .map(|m| {
            if m.name.is_empty() {
                bail!("GET /cluster has a member with an empty name");
            }
            Ok(Member {
                role: Role::parse(&m.role),
                name: m.name,
                state: m.state,
                group: None,
            })
        })
        .collect()
}

/// `GET /history`: `[[timeline, lsn, reason, timestamp, new_leader], ...]`.
pub fn parse_history(json: &str) -> Result<Vec<Switch>> {
    let rows: Vec<Vec<serde_json::Value>> =
        serde_json::from_str(json).context("GET /history is not the JSON Patroni sends")?;
    rows.into_iter()
        .map(|row| {
            let timeline = row
                .first()
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| anyhow!("GET /history has a row without a timeline"))?;
            let new_leader = row
                .get(4)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string();
            Ok(Switch {
                timeline,
                new_leader,
                group: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            Api::parse("http://127.0.0.1:8008").unwrap(),
            Api {
                host: "127.0.0.1".into(),
                port: 8008
            }
        );
        assert_eq!(
            Api::parse("http://pg-0/").unwrap(),
            Api {
                host: "pg-0".into(),
                port: 8008
            }
        );
        assert_eq!(
            Api::parse("http://[::1]:9000").unwrap(),
            Api {
                host: "::1".into(),
                port: 9000
            }
        );
        assert!(Api::parse("https://h:8008").is_err());
        assert!(Api::parse("http://u:p@h:8008").is_err());
        assert!(Api::parse("http://h:x").is_err());
    }

    #[test]
    fn cluster_and_history_as_patroni_sends_them() {
        let cluster = r#"{"members": [{"name": "m1", "role": "leader", "state": "running", "api_url": "http://127.0.0.1:8008/patroni", "host": "127.0.0.1", "port": 5432, "timeline": 3},
            {"name": "m2", "role": "replica", "state": "streaming", "timeline": 3, "lag": 0}], "scope": "demo"}"#;
        let members = parse_cluster(cluster).unwrap();
        assert_eq!(
            members
                .iter()
                .map(|m| (m.name.as_str(), m.role))
                .collect::<Vec<_>>(),
            [("m1", Role::Leader), ("m2", Role::Replica)]
        );
        let history = r#"[[1, 25165984, "no recovery target specified", "2026-11-27T10:00:00+00:00", "m2"], [2, 33554592, "no recovery target specified", "2026-11-27T10:05:00+00:00", "m1"]]"#;
        let switches = parse_history(history).unwrap();
        assert_eq!(
            switches
                .iter()
                .map(|s| (s.timeline, s.new_leader.as_str()))
                .collect::<Vec<_>>(),
            [(1, "m2"), (2, "m1")]
        );
        assert!(parse_history("[]").unwrap().is_empty());
        // a role this program does not know leaves the rest of the view readable
        assert_eq!(
            parse_cluster(
                r#"{"members": [{"name": "x", "role": "boss"}, {"name": "y", "role": "leader"}]}"#
            )
            .unwrap()
            .iter()
            .map(|m| m.role)
            .collect::<Vec<_>>(),
            [Role::Unknown, Role::Leader]
        );
        assert!(parse_cluster(r#"{"members": [{"name": "", "role": "leader"}]}"#).is_err());
        assert!(parse_cluster("<html>").is_err());
    }

    #[test]
    fn http_bodies() {
        assert_eq!(
            body(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}").unwrap(),
            "{}"
        );
        assert!(body(b"HTTP/1.0 503 Service Unavailable\r\n\r\n{}").is_err());
        assert!(body(b"garbage").is_err());
    }
}
