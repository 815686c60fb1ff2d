//! Logs a person and a collector can read (#21), on the real `amesh-controller` binary (its
//! logging is `mesh::telemetry`'s, as every amesh binary's): written to a file, text lines
//! carry no ANSI escape; on a terminal (a pseudo-terminal from `script`) they are coloured, so
//! the choice follows the output; with `LOG_FORMAT=json` every line is one flat JSON object
//! (message and fields at the top level beside `timestamp`, `level`, `target`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const ESC: u8 = 0x1b;

/// How often and how many times a log file is read while waiting for a line: 30 s in all.
const POLL: Duration = Duration::from_millis(50);
const POLLS: u32 = 600;

/// Kills the child if the test fails before it stopped it.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder of manifests with one namespace, and a CA folder.
fn setup(dir: &Path) -> (String, String) {
    let manifests = dir.join("manifests");
    let ca = dir.join("ca");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::write(
        manifests.join("ns.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .unwrap();
    (
        manifests.to_string_lossy().into_owned(),
        ca.to_string_lossy().into_owned(),
    )
}

fn args(manifests: &str, ca: &str) -> Vec<String> {
    [
        "--source",
        "folder",
        "--manifests",
        manifests,
        "--ca-dir",
        ca,
        "--xds-addr",
        "127.0.0.1:0",
        "--tls-addr",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .to_vec()
}

/// Reads `file` until it holds `marker`; its bytes then. Panics, with what the file holds,
/// when `child` exits first or the marker has not come after [`POLLS`] reads.
fn wait_for_line(child: &mut Child, file: &Path, marker: &str) -> Vec<u8> {
    for _ in 0..POLLS {
        let text = std::fs::read(file).unwrap_or_default();
        if String::from_utf8_lossy(&text).contains(marker) {
            return text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the process exited ({status}) before {marker:?}:\n{}",
                String::from_utf8_lossy(&text)
            );
        }
        std::thread::sleep(POLL);
    }
    panic!(
        "no {marker:?} in {file:?} after {POLLS} reads:\n{}",
        String::from_utf8_lossy(&std::fs::read(file).unwrap_or_default())
    );
}

/// Waits until `file` holds `marker` (the controller is serving), then stops the process with
/// SIGTERM and waits for it; returns the file's bytes.
fn run_until(child: Child, file: &Path, marker: &str) -> Vec<u8> {
    let mut running = Running(child);
    wait_for_line(&mut running.0, file, marker);
    let pid = running.0.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
    let exit = running.0.wait().unwrap();
    assert!(
        exit.success(),
        "the controller exited with {exit} after SIGTERM"
    );
    std::fs::read(file).unwrap()
}

fn spawn_to_files(dir: &Path, env: &[(&str, &str)]) -> (Child, std::path::PathBuf) {
    let (manifests, ca) = setup(dir);
    let out = dir.join("stdout.log");
    let err = dir.join("stderr.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_amesh-controller"));
    cmd.args(args(&manifests, &ca))
        .env_remove("LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    (cmd.spawn().expect("start amesh-controller"), err)
}

#[test]
fn text_logs_in_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let (child, log) = spawn_to_files(dir.path(), &[]);
    let bytes = run_until(child, &log, "serving xDS");
    let text = String::from_utf8(bytes.clone()).expect("the log is UTF-8");
    assert!(text.lines().count() >= 3, "{text}");
    assert!(text.contains(" INFO "), "not text lines:\n{text}");
    assert!(
        !bytes.contains(&ESC),
        "ESC bytes (ANSI colour codes) in a log file:\n{text:?}"
    );
}

#[test]
fn text_logs_on_a_terminal_are_coloured() {
    // `script` runs the controller on a pseudo-terminal and copies what it writes there to a
    // file: the same binary, whose output is now a terminal, colours its levels.
    let dir = tempfile::tempdir().unwrap();
    let (manifests, ca) = setup(dir.path());
    let typescript = dir.path().join("typescript");
    let mut command = vec![env!("CARGO_BIN_EXE_amesh-controller").to_string()];
    command.extend(args(&manifests, &ca));
    // Every argument is a path or a plain word: quoting each is enough for `sh -c`.
    let line = command
        .iter()
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let child = Command::new("script")
        .args(["-q", "-f", "-e", "-c", &line])
        .arg(&typescript)
        .env_remove("LOG_FORMAT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("script (util-linux)");
    let mut running = Running(child);
    let text = wait_for_line(&mut running.0, &typescript, "serving xDS");
    // `script` passes SIGTERM on to the controller.
    let pid = running.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = running.0.wait();
    assert!(
        text.contains(&ESC),
        "no colour on a terminal:\n{}",
        String::from_utf8_lossy(&text)
    );
}

#[test]
fn json_logs_are_one_flat_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let (child, log) = spawn_to_files(dir.path(), &[("LOG_FORMAT", "json")]);
    let bytes = run_until(child, &log, "serving xDS");
    assert!(!bytes.contains(&ESC), "ESC bytes in JSON lines");
    let text = String::from_utf8(bytes).expect("the log is UTF-8");
    let mut lines = 0;
    let mut with_fields = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(
                obj.get(key).is_some_and(|v| v.is_string()),
                "no {key} string at the top level: {line}"
            );
        }
        // Flat: no `fields` object; every value a scalar.
        assert!(!obj.contains_key("fields"), "nested fields: {line}");
        for (k, v) in obj {
            assert!(
                !v.is_object() && !v.is_array(),
                "{k} is not a scalar: {line}"
            );
        }
        if obj.len() > 4 {
            with_fields += 1;
        }
    }
    assert!(lines >= 3, "{lines} lines:\n{text}");
    // Events with fields (`dir`, `addr`, ...) carry them beside the message.
    assert!(with_fields >= 1, "no line carries fields:\n{text}");
    assert!(text.contains("\"addr\":\"127.0.0.1:"), "{text}");
}
