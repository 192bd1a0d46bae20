//! `pgbouncer-watchdog`: the sidecar beside PgBouncer that ends a hooks' pause which outlived
//! its switchover, whatever happened to the Patroni members' pods.

mod cli;
// The flags the three binaries share; the watchdog has no dry run, so not all of them.
#[allow(dead_code)]
#[path = "../shared.rs"]
mod shared;

use std::process::ExitCode;

use clap::Parser;

use hooks::{logging, watchdog};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(cli.log_format.format());
    let result = cli.job().and_then(|job| match job {
        cli::Job::Watch(settings) => watchdog::run(&settings),
        cli::Job::Status(addr) => watchdog::status(addr),
    });
    shared::finish("pgbouncer-watchdog", result)
}
