//! The cluster view `before-stop` decides from, read from whichever source answers first, and
//! the decision it leads to.
//!
//! Sources: the local Patroni REST API (milliseconds), patronictl (two Python start-ups), or
//! files standing for patronictl's output (dry runs in CI). The REST API answers at once or
//! not at all (on SIGTERM Patroni shuts it down before stopping Postgres, and its socket then
//! accepts but never answers), so patronictl starts alongside once the API has had a head
//! start, and the first *good* answer wins: a source that fails only hands over to the other.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;

use crate::decision::{self, Decision, ListVerdict};
use crate::patroni_api::Api;
use crate::patronictl::{self, Member, Patronictl, Switch};

/// How long the REST API has to itself before patronictl starts alongside it.
pub const REST_HEAD_START: Duration = Duration::from_millis(50);

/// Where the view may come from.
#[derive(Clone, Debug)]
pub struct Sources {
    /// The local Patroni REST API, tried first when set.
    pub api: Option<Api>,
    pub patronictl: Patronictl,
    /// Files (or `-`) standing for `patronictl list` / `history` output (`-f json` or `-f tsv`).
    pub list_file: Option<PathBuf>,
    pub history_file: Option<PathBuf>,
}

/// Which source the view came from, for the summary event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Rest,
    Patronictl,
    Files,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Rest => "rest",
            Source::Patronictl => "patronictl",
            Source::Files => "files",
        }
    }
}

/// The member list and, when it could be read, the history (it may fail without harm when
/// the list decides alone).
#[derive(Debug)]
pub struct View {
    pub list: Vec<Member>,
    pub history: Result<Vec<Switch>>,
    pub source: Source,
}

/// Which of two raced sources gave the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Winner {
    First,
    Second,
}

/// Runs `first` at once and `second` once `first` has failed or had `head_start` to itself;
/// the first good answer wins. Fails only when both failed, with both reasons.
pub async fn first_good<T>(
    first: impl Future<Output = Result<T>>,
    second: impl Future<Output = Result<T>>,
    head_start: Duration,
) -> Result<(T, Winner)> {
    tokio::pin!(first, second);
    let early_failure = tokio::select! {
        answer = &mut first => match answer {
            Ok(value) => return Ok((value, Winner::First)),
            Err(err) => Some(err),
        },
        _ = tokio::time::sleep(head_start) => None,
    };
    let both = |a: anyhow::Error, b: anyhow::Error| anyhow!("{a:#}; and then: {b:#}");
    if let Some(first_err) = early_failure {
        return match second.await {
            Ok(value) => Ok((value, Winner::Second)),
            Err(second_err) => Err(both(first_err, second_err)),
        };
    }
    tokio::select! {
        answer = &mut first => match answer {
            Ok(value) => Ok((value, Winner::First)),
            Err(first_err) => match second.await {
                Ok(value) => Ok((value, Winner::Second)),
                Err(second_err) => Err(both(first_err, second_err)),
            },
        },
        answer = &mut second => match answer {
            Ok(value) => Ok((value, Winner::Second)),
            Err(second_err) => match first.await {
                Ok(value) => Ok((value, Winner::First)),
                Err(first_err) => Err(both(first_err, second_err)),
            },
        },
    }
}

/// Reads the view, bounded by `timeout` as a whole (each patronictl or REST call is bounded by
/// `--patronictl-timeout` too; whichever ends first).
pub async fn read(sources: &Sources, timeout: Duration) -> Result<View> {
    let work = async {
        let Some(api) = &sources.api else {
            return read_patronictl(sources).await;
        };
        let rest = async {
            let (list, history) = api.view(sources.patronictl.timeout).await.map_err(|err| {
                tracing::warn!(source = "rest", "Patroni REST API failed: {err:#}");
                err
            })?;
            Ok(View {
                list,
                history: Ok(history),
                source: Source::Rest,
            })
        };
        let (view, winner) = first_good(rest, read_patronictl(sources), REST_HEAD_START).await?;
        if winner == Winner::Second {
            tracing::info!(
                source = view.source.as_str(),
                "used {} for the cluster view: the Patroni REST API did not answer first",
                view.source.as_str()
            );
        }
        Ok(view)
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        anyhow!(
            "the cluster view could not be read within {} ms (the time --timeout left for it)",
            timeout.as_millis()
        )
    })?
}

async fn read_patronictl(sources: &Sources) -> Result<View> {
    let ctl = sources.patronictl.clone();
    let read = |file: Option<PathBuf>, subcommand: &'static str| {
        let ctl = ctl.clone();
        async move {
            match file {
                Some(path) => crate::config::read_input(&path),
                None => ctl.json(subcommand).await,
            }
        }
    };
    let (list, history) = tokio::join!(
        read(sources.list_file.clone(), "list"),
        read(sources.history_file.clone(), "history")
    );
    let list = patronictl::parse_list(&list?)?;
    let source = if sources.list_file.is_some() {
        Source::Files
    } else {
        Source::Patronictl
    };
    Ok(View {
        list,
        history: history.and_then(|text| patronictl::parse_history(&text)),
        source,
    })
}

/// The decision for `member`: from the list alone when it suffices, else from the history.
pub fn decide(member: &str, view: View) -> Result<Decision> {
    match decision::decide_from_list(member, &view.list).map_err(anyhow::Error::msg)? {
        ListVerdict::Decided(decision) => Ok(decision),
        ListVerdict::NeedHistory => {
            let history = view.history?;
            Ok(decision::decide_from_history(member, &view.list, &history))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    async fn after(ms: u64, answer: Result<&'static str>) -> Result<&'static str> {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        answer
    }

    fn fail(what: &str) -> Result<&'static str> {
        Err(anyhow!("{what} failed"))
    }

    /// (first's delay, first ok?, second's delay, second ok?) → expected winner, or an error
    /// naming both. Delays of `second` count from when it starts.
    #[tokio::test(start_paused = true)]
    async fn the_first_good_answer_wins() {
        let head = Duration::from_millis(50);
        type Row = (u64, bool, u64, bool, Option<(Winner, u64)>);
        let table: [Row; 8] = [
            // REST answers inside its head start: patronictl never runs.
            (5, true, 10, true, Some((Winner::First, 5))),
            // REST slow (200 ms), patronictl fails fast: REST's answer still wins.
            (200, true, 1, false, Some((Winner::First, 200))),
            // REST fails fast: patronictl starts at once, not after the head start.
            (1, false, 30, true, Some((Winner::Second, 31))),
            // REST silent, patronictl answers after its start at 50 ms.
            (10_000, true, 100, true, Some((Winner::Second, 150))),
            // REST slow but earlier than patronictl.
            (120, true, 500, true, Some((Winner::First, 120))),
            // REST fails late, patronictl still running: its answer is waited for.
            (100, false, 300, true, Some((Winner::Second, 350))),
            // Both fail.
            (1, false, 1, false, None),
            (300, false, 1, false, None),
        ];
        for (i, (d1, ok1, d2, ok2, expected)) in table.into_iter().enumerate() {
            let started = tokio::time::Instant::now();
            let got = first_good(
                after(d1, if ok1 { Ok("rest") } else { fail("rest") }),
                after(d2, if ok2 { Ok("ctl") } else { fail("ctl") }),
                head,
            )
            .await;
            let took = started.elapsed().as_millis() as u64;
            match (got, expected) {
                (Ok((value, winner)), Some((want, at))) => {
                    assert_eq!(winner, want, "row {i}");
                    assert_eq!(value, if want == Winner::First { "rest" } else { "ctl" });
                    assert_eq!(took, at, "row {i}: answered at {took} ms");
                }
                (Err(err), None) => {
                    let text = format!("{err:#}");
                    assert!(
                        text.contains("rest failed") && text.contains("ctl failed"),
                        "{text}"
                    );
                }
                (got, want) => panic!("row {i}: got {:?}, want {want:?}", got.map(|g| g.1)),
            }
        }
    }

    #[tokio::test]
    async fn the_read_is_bounded_as_a_whole() {
        let sources = Sources {
            api: Some(Api::parse("http://127.0.0.1:9").unwrap()),
            patronictl: Patronictl {
                program: "/bin/sh".into(),
                args: vec!["-c".into(), "sleep 5".into()],
                timeout: Duration::from_secs(5),
            },
            list_file: None,
            history_file: None,
        };
        let started = Instant::now();
        let err = read(&sources, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(format!("{err:#}").contains("within 300 ms"), "{err:#}");
    }
}
