//! Plain HTTP/1.1 requests from inside a pod, with the method, headers and body the scenario
//! needs, several on one kept-alive connection when asked: what an app in the pod would send.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: &'static str,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn get(path: &str) -> Req {
        Req {
            method: "GET",
            path: path.into(),
            headers: vec![],
            body: vec![],
        }
    }

    pub fn method(mut self, method: &'static str) -> Req {
        self.method = method;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// One response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The echo app's answer, when the app answered.
    pub fn echo(&self) -> Option<lab::echo::EchoReply> {
        serde_json::from_str(&self.body).ok()
    }
}

/// Sends `reqs` one after another on one connection from `pod` to `addr`.
pub fn keepalive(
    lab: &lab::Lab,
    pod: &str,
    addr: SocketAddr,
    reqs: Vec<Req>,
) -> Result<Vec<Resp>, String> {
    let netns = lab.pod(pod).map_err(|e| e.to_string())?.netns.clone();
    lab::netns::run_in(&netns, move || exchange(addr, &reqs)).map_err(|e| e.to_string())?
}

/// One request on its own connection.
pub fn request(lab: &lab::Lab, pod: &str, addr: SocketAddr, req: Req) -> Result<Resp, String> {
    keepalive(lab, pod, addr, vec![req]).map(|mut r| r.remove(0))
}

fn exchange(addr: SocketAddr, reqs: &[Req]) -> Result<Vec<Resp>, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let mut out = Vec::new();
    for req in reqs {
        let mut head = format!("{} {} HTTP/1.1\r\nhost: {addr}\r\n", req.method, req.path);
        for (k, v) in &req.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("content-length: {}\r\n\r\n", req.body.len()));
        writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(&req.body))
            .map_err(|e| format!("send to {addr}: {e}"))?;
        out.push(read_response(&mut reader).map_err(|e| format!("answer from {addr}: {e}"))?);
    }
    Ok(out)
}

fn read_response(r: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(bad("connection closed before a response"));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(&format!("status line {line:?}")))?;
    let mut headers = Vec::new();
    let mut length = None;
    let mut chunked = false;
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_string());
            if k == "content-length" {
                length = v.parse::<usize>().ok();
            }
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            headers.push((k, v));
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                line.clear();
                r.read_line(&mut line)?;
                break;
            }
            let mut chunk = vec![0; size + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
