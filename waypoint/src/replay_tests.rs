use super::*;
use futures::StreamExt as _;
use http::HeaderValue;
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::mpsc;

/// A client body fed frame by frame through a channel (the client "sends" when the test does).
fn client() -> (mpsc::UnboundedSender<&'static str>, UpBody) {
    let (tx, rx) = mpsc::unbounded_channel::<&'static str>();
    let stream = tokio_stream_of(rx)
        .map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from_static(s.as_bytes()))));
    (tx, BodyExt::boxed(StreamBody::new(stream)))
}

fn tokio_stream_of(
    mut rx: mpsc::UnboundedReceiver<&'static str>,
) -> impl futures::Stream<Item = &'static str> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn next_data(b: &mut AttemptBody) -> Option<Bytes> {
    b.frame().await.map(|f| f.unwrap().into_data().unwrap())
}

#[tokio::test]
async fn the_first_attempt_gets_each_frame_as_it_arrives() {
    let (tx, body) = client();
    let replay = Replay::new(body, 1024);
    let mut first = replay.attempt();
    tx.send("hello ").unwrap();
    // Served before the client sends more: nothing is held back until the body's end.
    assert_eq!(next_data(&mut first).await.unwrap(), "hello ");
    tx.send("world").unwrap();
    drop(tx);
    assert_eq!(next_data(&mut first).await.unwrap(), "world");
    assert!(first.frame().await.is_none());
    assert!(replay.replayable());
    // A retry gets the whole body again.
    let second = replay.attempt();
    assert_eq!(second.collect().await.unwrap().to_bytes(), "hello world");
}

#[tokio::test]
async fn a_retry_replays_what_was_read_then_goes_on_with_the_client() {
    let (tx, body) = client();
    let replay = Replay::new(body, 1024);
    let mut first = replay.attempt();
    tx.send("part one, ").unwrap();
    assert_eq!(next_data(&mut first).await.unwrap(), "part one, ");
    // The endpoint failed mid-body: a retry takes over.
    let second = replay.attempt();
    assert!(
        first.frame().await.unwrap().is_err(),
        "the superseded attempt stops"
    );
    tx.send("part two").unwrap();
    drop(tx);
    assert_eq!(
        second.collect().await.unwrap().to_bytes(),
        "part one, part two"
    );
}

#[tokio::test]
async fn past_the_limit_the_body_streams_whole_but_is_not_replayable() {
    let (tx, body) = client();
    let replay = Replay::new(body, 8);
    let first = replay.attempt();
    for chunk in ["0123", "4567", "89ab", "cdef"] {
        tx.send(chunk).unwrap();
    }
    drop(tx);
    assert_eq!(
        first.collect().await.unwrap().to_bytes(),
        "0123456789abcdef"
    );
    assert!(!replay.replayable());
}

#[tokio::test]
async fn an_empty_body_ends_at_once_with_an_exact_size() {
    let replay = Replay::new(
        http_body_util::Empty::new().map_err(|n| match n {}).boxed(),
        64,
    );
    let first = replay.attempt();
    assert!(first.is_end_stream(), "a GET stays without a body upstream");
    assert_eq!(first.size_hint().exact(), Some(0));
    let full = Replay::new(
        http_body_util::Full::new(Bytes::from_static(b"abc"))
            .map_err(|n| match n {})
            .boxed(),
        64,
    );
    let first = full.attempt();
    assert_eq!(first.size_hint().exact(), Some(3));
    assert_eq!(first.collect().await.unwrap().to_bytes(), "abc");
    let second = full.attempt();
    assert_eq!(second.size_hint().exact(), Some(3));
    assert_eq!(second.collect().await.unwrap().to_bytes(), "abc");
}

#[test]
fn attempt_heads_are_copies() {
    let mut head = Request::new(());
    *head.uri_mut() = "/a?b=c".parse().unwrap();
    head.headers_mut()
        .insert("x-user", HeaderValue::from_static("alice"));
    let copy = clone_head(&head);
    assert_eq!(copy.uri(), "/a?b=c");
    assert_eq!(copy.headers()["x-user"], "alice");
    assert_eq!(copy.method(), head.method());
}
