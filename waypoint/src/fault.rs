//! Fault injection (VirtualService `fault`, Envoy's fault filter): before a request is
//! forwarded, delay it for a share of requests (response flag `DI`), then abort a share of
//! requests with an HTTP status or a gRPC status (flag `FI`). The route timeout starts after
//! the delay, as in Envoy, where the fault filter runs before the router.

use std::time::Duration;

use amesh_proto::amesh::l7::v1 as pb;
use http::StatusCode;

use crate::policy::duration;

/// Envoy's body of an aborted request.
pub const ABORT_BODY: &str = "fault filter abort";

/// A converted `FaultInjection`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(Abort, f64)>,
}

/// What an aborted request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort {
    Http(StatusCode),
    /// HTTP 200 with `grpc-status` in a trailers-only response.
    Grpc(u32),
}

/// What the fault stage decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Decision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl Fault {
    /// Converts the proto; `Err` names the field (relative to `fault`) and the problem.
    pub fn from_proto(p: &pb::FaultInjection) -> Result<Self, (String, String)> {
        let delay = match &p.delay {
            None => None,
            Some(d) => {
                let pct = percent(d.percent).map_err(|e| ("delay.percent".to_string(), e))?;
                duration(d.fixed_delay.as_ref())
                    .map_err(|e| ("delay.fixed_delay".to_string(), e.to_string()))?
                    .map(|t| (t, pct))
            }
        };
        let abort = match &p.abort {
            None => None,
            Some(a) => {
                let pct = percent(a.percent).map_err(|e| ("abort.percent".to_string(), e))?;
                let kind = if a.grpc_status != 0 {
                    if a.grpc_status > 16 {
                        return Err((
                            "abort.grpc_status".into(),
                            format!("{} is not a gRPC status (0..=16)", a.grpc_status),
                        ));
                    }
                    Abort::Grpc(a.grpc_status)
                } else {
                    let code = u16::try_from(a.http_status)
                        .ok()
                        .filter(|c| (200..=599).contains(c))
                        .and_then(|c| StatusCode::from_u16(c).ok())
                        .ok_or_else(|| {
                            (
                                "abort.http_status".to_string(),
                                format!("{} is not an HTTP status (200..=599)", a.http_status),
                            )
                        })?;
                    Abort::Http(code)
                };
                Some((kind, pct))
            }
        };
        Ok(Fault { delay, abort })
    }

    /// Draws the faults of one request; `roll` yields uniform values in `[0, 1)`.
    pub fn decide(&self, mut roll: impl FnMut() -> f64) -> Decision {
        let hit = |pct: f64, r: f64| r * 100.0 < pct;
        Decision {
            delay: self
                .delay
                .and_then(|(d, pct)| hit(pct, roll()).then_some(d)),
            abort: self
                .abort
                .and_then(|(a, pct)| hit(pct, roll()).then_some(a)),
        }
    }
}

fn percent(p: f64) -> Result<f64, String> {
    if p.is_finite() && (0.0..=100.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a percentage (0..=100)"))
    }
}

/// The response of an aborted request (status, headers and body), and its response flag.
pub fn abort_response(abort: Abort) -> http::Response<&'static str> {
    let mut resp = http::Response::new(ABORT_BODY);
    match abort {
        Abort::Http(code) => {
            *resp.status_mut() = code;
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain"),
            );
        }
        Abort::Grpc(status) => {
            // Trailers-only: every gRPC field in the headers, no body.
            *resp.body_mut() = "";
            let h = resp.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", http::HeaderValue::from(status));
            h.insert(
                "grpc-message",
                http::HeaderValue::from_static("fault%20filter%20abort"),
            );
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(delay_pct: f64, abort: Option<(u32, u32, f64)>) -> Fault {
        Fault::from_proto(&pb::FaultInjection {
            delay: Some(pb::fault_injection::Delay {
                fixed_delay: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 5_000_000,
                }),
                percent: delay_pct,
            }),
            abort: abort.map(
                |(http_status, grpc_status, percent)| pb::fault_injection::Abort {
                    http_status,
                    grpc_status,
                    percent,
                },
            ),
        })
        .unwrap()
    }

    #[test]
    fn percentages_hold_over_many_requests() {
        let f = fault(30.0, Some((500, 0, 50.0)));
        let mut rng = rand::rng();
        let (mut delayed, mut aborted) = (0, 0);
        let n = 20_000;
        for _ in 0..n {
            let d = f.decide(|| rand::Rng::random::<f64>(&mut rng));
            delayed += usize::from(d.delay.is_some());
            aborted += usize::from(d.abort.is_some());
        }
        let share = |k: usize| k as f64 * 100.0 / n as f64;
        assert!((share(delayed) - 30.0).abs() < 2.0, "{}", share(delayed));
        assert!((share(aborted) - 50.0).abs() < 2.0, "{}", share(aborted));
    }

    #[test]
    fn zero_and_hundred_percent_are_exact() {
        let always = fault(100.0, Some((503, 0, 100.0)));
        let never = fault(0.0, Some((503, 0, 0.0)));
        for r in [0.0, 0.5, 0.999_999] {
            let d = always.decide(|| r);
            assert_eq!(d.delay, Some(Duration::from_millis(5)));
            assert_eq!(d.abort, Some(Abort::Http(StatusCode::SERVICE_UNAVAILABLE)));
            assert_eq!(never.decide(|| r), Decision::default());
        }
    }

    #[test]
    fn grpc_abort_is_a_trailers_only_200() {
        let f = fault(0.0, Some((0, 14, 100.0)));
        let abort = f.decide(|| 0.0).abort.unwrap();
        assert_eq!(abort, Abort::Grpc(14));
        let resp = abort_response(abort);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/grpc");
        assert_eq!(resp.headers()["grpc-status"], "14");
        assert_eq!(*resp.body(), "");
        let http = abort_response(Abort::Http(StatusCode::INTERNAL_SERVER_ERROR));
        assert_eq!(http.status(), 500);
        assert_eq!(*http.body(), "fault filter abort");
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = |p: pb::FaultInjection| Fault::from_proto(&p).unwrap_err().0;
        assert_eq!(
            bad(pb::FaultInjection {
                abort: Some(pb::fault_injection::Abort {
                    http_status: 99,
                    grpc_status: 0,
                    percent: 10.0
                }),
                delay: None,
            }),
            "abort.http_status"
        );
        assert_eq!(
            bad(pb::FaultInjection {
                abort: Some(pb::fault_injection::Abort {
                    http_status: 0,
                    grpc_status: 40,
                    percent: 10.0
                }),
                delay: None,
            }),
            "abort.grpc_status"
        );
        assert_eq!(
            bad(pb::FaultInjection {
                abort: None,
                delay: Some(pb::fault_injection::Delay {
                    fixed_delay: None,
                    percent: 101.0
                }),
            }),
            "delay.percent"
        );
    }
}
