use super::*;
use crate::retry::MAX_REPLAY_BODY;
use http::HeaderValue;
use http_body_util::StreamBody;
use hyper::body::Frame;

fn chunks(n: usize, size: usize) -> UpBody {
    let frames = (0..n).map(move |_| Ok::<_, BoxError>(Frame::data(Bytes::from(vec![b'x'; size]))));
    StreamBody::new(futures::stream::iter(frames)).boxed()
}

#[tokio::test]
async fn a_small_body_is_kept_whole_for_replays() {
    match buffer(chunks(4, 1000), MAX_REPLAY_BODY).await.unwrap() {
        Buffered::Whole(b) => assert_eq!(b.len(), 4000),
        Buffered::Partial(..) => panic!("4000 bytes fit in the replay buffer"),
    }
    match buffer(chunks(0, 0), MAX_REPLAY_BODY).await.unwrap() {
        Buffered::Whole(b) => assert!(b.is_empty()),
        Buffered::Partial(..) => panic!("an empty body fits"),
    }
}

#[tokio::test]
async fn a_large_body_streams_once_and_whole() {
    // 100 KiB in 10 KiB frames: past the 64 KiB limit, so not replayable, but nothing lost.
    let (prefix, rest) = match buffer(chunks(10, 10 * 1024), MAX_REPLAY_BODY)
        .await
        .unwrap()
    {
        Buffered::Partial(p, r) => (p, r),
        Buffered::Whole(_) => panic!("100 KiB is over the limit"),
    };
    assert!(prefix.len() > MAX_REPLAY_BODY);
    let whole = Prefixed {
        prefix: Some(prefix),
        rest,
    }
    .collect()
    .await
    .unwrap()
    .to_bytes();
    assert_eq!(whole.len(), 100 * 1024);
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
