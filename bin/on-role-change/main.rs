//! `on-role-change`: Patroni's `on_role_change`, `on_start` and `on_restart` callback. On the
//! new primary it waits until Postgres accepts writes, then RESUMEs every PgBouncer.

mod cli;
#[path = "../shared.rs"]
mod shared;

use std::process::ExitCode;

use clap::Parser;

use hooks::{detach, logging, on_role_change};

fn main() -> ExitCode {
    if let Some(code) = detach::launcher_stage() {
        return code;
    }
    let cli = cli::Cli::parse();
    logging::init(cli.common.log_format());
    let result = cli
        .settings()
        .and_then(|settings| on_role_change::run(&settings));
    shared::finish("on-role-change", result)
}
