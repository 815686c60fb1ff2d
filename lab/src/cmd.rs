//! Running iproute2 (`ip`), the one external tool the lab drives, with errors that name the
//! exact command line and what it printed.

use std::ffi::OsStr;
use std::process::{Command, ExitStatus, Stdio};

/// An external command that could not run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    #[error("could not start `{command}`: {source} (is iproute2 installed, and are we root?)")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Runs `ip ARGS...` and returns its stdout.
pub fn ip<I, S>(args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run("ip", args)
}

/// Runs `ip -n NETNS ARGS...`: the command acts inside the named network namespace.
pub fn ip_in<I, S>(netns: &str, args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut all: Vec<std::ffi::OsString> = vec!["-n".into(), netns.into()];
    all.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
    run("ip", all)
}

/// Runs `program ARGS...` to completion, capturing stdout and stderr.
pub fn run<I, S>(program: &str, args: I) -> Result<String, CmdError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    let command = display(program, &args);
    tracing::trace!(%command, "run");
    let output = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CmdError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(CmdError::Failed {
            command,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn display(program: &str, args: &[std::ffi::OsString]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_command_and_stderr() {
        let err = run("sh", ["-c", "echo boom >&2; exit 3"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`sh -c echo boom >&2; exit 3`"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let err = run("amesh-no-such-program", ["x"]).unwrap_err();
        assert!(matches!(err, CmdError::Spawn { .. }), "{err}");
    }
}
