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
