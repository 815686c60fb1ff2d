//! `amesh-cni`: the chained CNI plugin the container runtime runs for every pod. See
//! `ztunnel::cni::plugin` for what it does.

use std::io::Read;

fn main() {
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
