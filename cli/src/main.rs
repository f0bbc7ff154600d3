//! `weir`: what an operator asks of weir workers without writing code. Where each partition
//! stands (SQLite and Kafka offsets, lag, owner epoch, outbox), and what a key holds in the
//! partition stores, read-only and safe beside running workers; dead letters to look at and
//! redrive; a stopped group moved to another position.
//!
//! ```text
//! cargo install --path cli
//! weir status --brokers localhost:9092 --state-dir weir-state --group orders
//! weir state get --state-dir weir-state --group orders --topic orders --store totals alice
//! ```

mod dlq;
mod error;
mod kafka;
mod locate;
mod nats;
mod query;
mod reset;
mod state_cmd;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;

/// `weir --help` ends with these; the README repeats them.
const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  nothing found (state get, query: no partition holds the key, or no worker asked owns
     it; dlq show: no such record)
  2  usage error (unknown subcommand or flag, missing or invalid argument)
  3  bad input: a missing state dir, group, topic or store; a corrupt or foreign state file;
     a topic that does not exist; a token a worker refused
  4  the broker (Kafka, NATS) or a worker could not be reached, or the broker refused a request
  5  refused: the group has live members (reset; nothing was changed)";

/// Offsets, lag, state and dead letters of weir workers, for operators. Reads state files
/// read-only, safe while workers run; only `reset` writes them, and only while the group is
/// stopped.
#[derive(Debug, Parser)]
#[command(name = "weir", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One row per partition store of a group: SQLite next offset, Kafka committed offset,
    /// high watermark, lag, owner epoch, outbox backlog, last commit, file size.
    Status(status::StatusArgs),
    /// Read the partition stores of a group: one key, a prefix scan, or everything.
    #[command(subcommand)]
    State(state_cmd::StateCommand),
    /// The dead letters of a topic: list them, show one, produce them back (redrive).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// A key's value from running workers (their `/state/{store}/{key}`, WEIR_HTTP_TOKEN):
    /// asks each until the one that owns the key's partition answers.
    Query(query::QueryArgs),
    /// Move a stopped group to another position (earliest, latest, an offset, a time), in its
    /// stores and in Kafka; its stores start over empty there. A dry run without --execute.
    Reset(reset::ResetArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Status(args) => status::run(&args),
        Command::State(cmd) => state_cmd::run(&cmd),
        Command::Dlq(cmd) => dlq::run(&cmd),
        Command::Query(args) => query::run(&args),
        Command::Reset(args) => reset::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
