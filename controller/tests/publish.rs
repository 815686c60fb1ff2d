//! The publisher: the first snapshot is ready before any client connects, a burst of source
//! changes is published at most once per debounce interval, and the last change always lands.

use std::sync::Arc;
use std::time::Duration;

use amesh_proto::AUTHORIZATION_TYPE_URL;
use controller::manifests::load_yaml;
use controller::xds::spawn_publisher;
use controller::{Manifests, TranslateOptions};
use tokio::sync::watch;

fn policies(count: usize) -> Manifests {
    let text: String = (0..count)
        .map(|i| {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: p{i}, namespace: shop}}\n\
                 spec: {{action: DENY, rules: [{{to: [{{operation: {{ports: [\"{}\"]}}}}]}}]}}\n",
                1000 + i
            )
        })
        .collect();
    let loaded = load_yaml("policies.yaml", &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.manifests
}

#[tokio::test]
async fn bursts_are_published_at_most_once_per_interval() {
    let debounce = Duration::from_millis(200);
    let (tx, rx) = watch::channel(Arc::new(policies(1)));
    let (mut resources, task) = spawn_publisher(rx, TranslateOptions::default(), debounce);
    // Besides the policies, the translation may add fixed ones (e.g. converted mTLS modes).
    let fixed = resources.borrow_and_update().len(AUTHORIZATION_TYPE_URL) - 1;

    let watcher = tokio::spawn(async move {
        let mut seen = Vec::new();
        while resources.changed().await.is_ok() {
            let count = resources.borrow_and_update().len(AUTHORIZATION_TYPE_URL);
            seen.push((tokio::time::Instant::now(), count));
        }
        seen
    });
    // 30 changes in ~300 ms.
    for n in 2..=31 {
        tx.send_replace(Arc::new(policies(n)));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(3 * debounce).await;
    drop(tx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("publisher stops when the source closes")
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .unwrap()
        .unwrap();

    assert!(!seen.is_empty());
    assert!(seen.len() <= 4, "{} publications for one burst", seen.len());
    for pair in seen.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // A little slack for timer granularity.
        assert!(
            gap >= debounce - Duration::from_millis(20),
            "published {gap:?} apart"
        );
    }
    assert_eq!(
        seen.last().unwrap().1,
        31 + fixed,
        "the last change is published"
    );
}
