//! The `amesh` binary: parses the command line and runs one subcommand.

use clap::{CommandFactory, Parser};
use cli::args::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args = Cli::parse();
    let result = match args.command {
        Command::Status(a) => cli::status::run(&args.target, a).await,
        Command::Config(a) => cli::config::run(&args.target, a).await,
        Command::Explain(a) => cli::explain::run(&args.target, a).await,
        Command::Graph(a) => cli::graph::run(&args.target, a).await,
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "amesh", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amesh: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
