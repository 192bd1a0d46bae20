//! `before-stop`: Patroni's `postgresql.before_stop`. Pauses every PgBouncer when the member
//! that is stopping is the one clients are routed to, so in-flight transactions finish and
//! new ones queue instead of failing.

mod cli;
#[path = "../shared.rs"]
mod shared;

use std::process::ExitCode;

use clap::Parser;

use hooks::{before_stop, detach, logging};

fn main() -> ExitCode {
    if let Some(code) = detach::launcher_stage() {
        return code;
    }
    let cli = cli::Cli::parse();
    logging::init(cli.common.log_format());
    let result = cli.job().and_then(|job| match job {
        cli::Job::Hook(settings) => before_stop::run(&settings),
        cli::Job::Net(fleet, max_pause, id) => before_stop::run_net(&fleet, max_pause, &id),
    });
    shared::finish("before-stop", result)
}
