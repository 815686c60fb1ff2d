//! Forwarding to the node's nameservers, against real UDP sockets on loopback.

use std::net::SocketAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::net::UdpSocket;

use super::forward_to_all;

fn query(id: u16) -> (Message, Vec<u8>) {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("example.com.").unwrap(),
        RecordType::A,
    ));
    let raw = m.to_vec().unwrap();
    (m, raw)
}

/// A nameserver on loopback that answers every query with `rcode` (or never, with `None`).
async fn nameserver(rcode: Option<ResponseCode>) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Some(rcode) = rcode else { continue };
            let q = Message::from_vec(&buf[..n]).unwrap();
            let a = Message::error_msg(q.metadata.id, q.metadata.op_code, rcode);
            let _ = socket.send_to(&a.to_vec().unwrap(), from).await;
        }
    });
    addr
}

fn rcode(bytes: &[u8]) -> ResponseCode {
    Message::from_vec(bytes).unwrap().metadata.response_code
}

#[tokio::test]
async fn each_nameserver_is_tried_until_one_answers() {
    let silent = nameserver(None).await;
    let failing = nameserver(Some(ResponseCode::ServFail)).await;
    let good = nameserver(Some(ResponseCode::NXDomain)).await;
    let (q, raw) = query(41);
    // Silence and SERVFAIL both move on to the next nameserver.
    let answer = forward_to_all(&q, &raw, &[silent, failing, good])
        .await
        .unwrap();
    assert_eq!(rcode(&answer), ResponseCode::NXDomain);
    assert_eq!(&answer[..2], &41u16.to_be_bytes());
    // When none does better, the last real answer is passed on.
    let answer = forward_to_all(&q, &raw, &[failing, silent]).await.unwrap();
    assert_eq!(rcode(&answer), ResponseCode::ServFail);
    // Nothing at all: nothing to pass on (the proxy answers SERVFAIL itself).
    assert!(forward_to_all(&q, &raw, &[silent]).await.is_none());
}

/// Writes a resolv.conf naming `ips`, with a modification time of `secs` after the epoch (so
/// each version differs whatever the file system's timestamp granularity).
fn write_resolv_conf(path: &std::path::Path, ips: &[&str], secs: u64) {
    let text: String = ips.iter().map(|ip| format!("nameserver {ip}\n")).collect();
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap();
}

fn on_53(ips: &[&str]) -> Vec<SocketAddr> {
    ips.iter()
        .map(|ip| SocketAddr::new(ip.parse().unwrap(), 53))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_resolv_conf_is_reread_when_it_changes_and_queries_never_wait_for_that() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    write_resolv_conf(&path, &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], 1);
    let resolvers = super::Resolvers::new(&path);
    // At most three, in file order (as glibc).
    assert_eq!(
        resolvers.all(),
        on_53(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    );

    // A change is seen at the next look, not before.
    write_resolv_conf(&path, &["10.0.0.9"], 2);
    assert_eq!(
        resolvers.all(),
        on_53(&["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    );
    tokio::time::advance(super::RESOLV_CONF_RECHECK).await;
    assert_eq!(resolvers.all(), on_53(&["10.0.0.9"]));

    // While one query is looking at the file (holding the check), the others take the list
    // as it is instead of queueing behind it.
    write_resolv_conf(&path, &["10.0.0.7"], 3);
    tokio::time::advance(super::RESOLV_CONF_RECHECK).await;
    {
        let _looking = resolvers.check.lock();
        assert_eq!(resolvers.all(), on_53(&["10.0.0.9"]));
    }
    assert_eq!(resolvers.all(), on_53(&["10.0.0.7"]));

    // A file that goes away leaves no nameservers (the query then fails at once).
    std::fs::remove_file(&path).unwrap();
    tokio::time::advance(super::RESOLV_CONF_RECHECK).await;
    assert!(resolvers.all().is_empty());
}
