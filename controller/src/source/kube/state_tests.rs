use super::*;
use crate::manifests::load_yaml;

fn pod(name: &str) -> Object {
    let text = format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop}}\n");
    let mut loaded = load_yaml("test.yaml", &text);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let key = ObjectKey::new("shop", name);
    Kind::Pod
        .take(&mut loaded.manifests, &key)
        .expect("the pod")
}

fn update(kind: Kind, change: Change) -> Update {
    Update { kind, change }
}

fn pods(state: &State) -> Vec<String> {
    state
        .manifests()
        .pods
        .keys()
        .map(|k| k.name.clone())
        .collect()
}

#[test]
fn ready_once_every_kind_is_listed_or_missing() {
    let mut state = State::new(&[Kind::Pod, Kind::Gateway]);
    assert!(!state.ready());
    state.apply(update(Kind::Pod, Change::Relist));
    state.apply(update(Kind::Pod, Change::Listed));
    assert!(!state.ready());
    assert_eq!(state.pending().collect::<Vec<_>>(), [Kind::Gateway]);
    state.apply(update(Kind::Gateway, Change::Missing));
    assert!(state.ready());
    assert_eq!(state.missing().collect::<Vec<_>>(), [Kind::Gateway]);
}

#[test]
fn a_relist_replaces_the_kind_only_when_complete() {
    let mut state = State::new(&[Kind::Pod]);
    state.apply(update(Kind::Pod, Change::Relist));
    state.apply(update(Kind::Pod, Change::Item(pod("a"))));
    state.apply(update(Kind::Pod, Change::Item(pod("b"))));
    assert!(pods(&state).is_empty(), "a list in progress is not shown");
    assert!(state.apply(update(Kind::Pod, Change::Listed)));
    assert_eq!(pods(&state), ["a", "b"]);

    assert!(!state.apply(update(Kind::Pod, Change::Relist)));
    assert!(!state.apply(update(Kind::Pod, Change::Item(pod("c")))));
    assert_eq!(pods(&state), ["a", "b"]);
    state.apply(update(Kind::Pod, Change::Listed));
    assert_eq!(
        pods(&state),
        ["c"],
        "objects missing from the new list are gone"
    );
}

#[test]
fn applies_and_deletes() {
    let mut state = State::new(&[Kind::Pod]);
    assert!(state.apply(update(Kind::Pod, Change::Applied(pod("a")))));
    assert_eq!(pods(&state), ["a"]);
    let gone = ObjectKey::new("shop", "nope");
    assert!(!state.apply(update(Kind::Pod, Change::Deleted(gone))));
    let a = ObjectKey::new("shop", "a");
    assert!(state.apply(update(Kind::Pod, Change::Deleted(a))));
    assert!(pods(&state).is_empty());
}

#[test]
fn a_kind_gone_missing_has_no_objects() {
    let mut state = State::new(&[Kind::Pod]);
    state.apply(update(Kind::Pod, Change::Applied(pod("a"))));
    assert!(state.apply(update(Kind::Pod, Change::Missing)));
    assert!(pods(&state).is_empty());
    assert!(!state.apply(update(Kind::Pod, Change::Missing)));
}
