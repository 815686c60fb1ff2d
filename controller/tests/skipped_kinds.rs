//! Objects of kinds amesh does not read: a built-in Kubernetes kind that does not configure
//! the mesh is skipped quietly; a mesh kind amesh does not implement, or a kind nobody knows,
//! is skipped with a warning naming the kind, apiVersion, file and object, logged once per
//! object rather than at every reload.

use std::fs;
use std::io::Write;
use std::sync::Arc;

use controller::manifests::{load_dir, LastValid, SkipReason};
use parking_lot::Mutex;

const FOLDER: &str = "\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
data: {a: b}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external-api, namespace: shop}
spec: {hosts: [api.example.com]}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: web-tls, namespace: shop}
---
apiVersion: apps/v1beta1
kind: Deployment
metadata: {name: web, namespace: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80}]
";

fn unknown_and_unsupported_kinds_are_reported_and_the_rest_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("app.yaml"), FOLDER).unwrap();
    let loaded = load_dir(dir.path());
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.manifests.services.len(), 1);
    let messages: Vec<String> = loaded.skipped.iter().map(ToString::to_string).collect();
    // The ConfigMap and the StatefulSet are expected in application folders: no warning.
    assert_eq!(messages.len(), 3, "{messages:#?}");
    for (message, (kind, api_version, name)) in messages.iter().zip([
        (
            "ServiceEntry",
            "networking.istio.io/v1",
            "shop/external-api",
        ),
        ("Certificate", "cert-manager.io/v1", "shop/web-tls"),
        ("Deployment", "apps/v1beta1", "shop/web"),
    ]) {
        assert!(message.contains("app.yaml"), "{message}");
        assert!(message.contains(kind), "{message}");
        assert!(message.contains(api_version), "{message}");
        assert!(message.contains(name), "{message}");
    }
    assert!(
        messages[0].contains("not supported by amesh"),
        "{}",
        messages[0]
    );
    assert!(
        messages[1].contains("not a kind amesh knows"),
        "{}",
        messages[1]
    );
    assert!(
        messages[2].contains("amesh reads Deployment as apps/v1"),
        "{}",
        messages[2]
    );
    assert_eq!(loaded.skipped[0].reason, SkipReason::Unsupported);
    assert_eq!(loaded.skipped[1].object.document, 4);
}

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock())
            .matches(needle)
            .count()
    }
}

/// One test, not two: tracing caches per call site whether anyone listens, so a test without
/// a subscriber running beside this one could hide its log lines.
#[test]
fn skipped_kinds_are_reported_once_per_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("app.yaml"), FOLDER).unwrap();
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        unknown_and_unsupported_kinds_are_reported_and_the_rest_loads();
        let before = log.count("cert-manager.io/v1 Certificate");
        assert_eq!(before, 1, "load_dir logs what it skips");
        let mut history = LastValid::default();
        history.load_dir(dir.path());
        history.load_dir(dir.path());
        assert_eq!(log.count("cert-manager.io/v1 Certificate"), 2);
        assert_eq!(log.count("networking.istio.io/v1 ServiceEntry"), 2);
        assert_eq!(log.count("ConfigMap"), 0);
        // Moved within the file, the same object is not reported again ...
        let moved = format!("---\n{FOLDER}");
        fs::write(dir.path().join("app.yaml"), &moved).unwrap();
        history.load_dir(dir.path());
        assert_eq!(log.count("cert-manager.io/v1 Certificate"), 2);
        // ... a new one is.
        let renamed = moved.replace("web-tls", "api-tls");
        fs::write(dir.path().join("app.yaml"), renamed).unwrap();
        history.load_dir(dir.path());
        assert_eq!(
            log.count("shop/api-tls"),
            1,
            "{}",
            String::from_utf8_lossy(&log.0.lock())
        );
        assert_eq!(log.count("cert-manager.io/v1 Certificate"), 3);
    });
}
