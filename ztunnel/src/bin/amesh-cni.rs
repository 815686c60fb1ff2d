//! `amesh-cni`: the chained CNI plugin the container runtime runs for every pod (see
//! `ztunnel::cni::plugin`), and its installer, `amesh-cni install` (see
//! `ztunnel::cni::install`). With `CNI_COMMAND` set, or without arguments, it is the plugin
//! and nothing else: the runtime's invocation never reaches the command line parser.

use std::io::Read;

use clap::{Parser, Subcommand};

/// The installer's command line (only when the runtime did not run us as a plugin).
#[derive(Parser)]
#[command(
    name = "amesh-cni",
    version,
    about = "amesh's chained CNI plugin and its installer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the plugin on this node and keep it in the CNI chain.
    Install(ztunnel::cni::install::InstallArgs),
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_none() && std::env::args_os().len() > 1 {
        let Command::Install(args) = Cli::parse().command;
        std::process::exit(ztunnel::cni::install::main(args));
    }
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let mut stdin = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
        eprintln!("amesh-cni: reading stdin: {e}");
    }
    match ztunnel::cni::plugin::run(&env, &stdin) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
        }
        Err((err, version)) => {
            println!("{}", err.to_json(&version));
            eprintln!("amesh-cni: {}: {}", err.msg, err.details);
            std::process::exit(1);
        }
    }
}
