//! `ztunnel version` and `ztunnel --help` answer with no configuration at all (an operator's
//! first command, and what image checks run); anything else unknown is a usage error.

use std::process::Command;

fn ztunnel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ztunnel"))
        .env_clear()
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn version_and_help_need_no_configuration() {
    for arg in ["version", "--version", "-V"] {
        let out = ztunnel(&[arg]);
        assert!(out.status.success(), "{arg}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with("ztunnel "), "{arg}: {text}");
        assert!(text.contains(env!("CARGO_PKG_VERSION")), "{arg}: {text}");
    }
    for arg in ["--help", "-h", "help"] {
        let out = ztunnel(&[arg]);
        assert!(out.status.success(), "{arg}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("XDS_ADDRESS"), "{arg}: {text}");
    }
    let out = ztunnel(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
    // Without any argument it runs, and without configuration that is a clear error.
    let out = ztunnel(&[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("XDS_ADDRESS"), "{err}");
}
