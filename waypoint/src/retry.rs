//! Retries of one request (VirtualService `retries`, Envoy's `retry_policy`): which outcomes of
//! an attempt are retried under which `retryOn` conditions, and the jittered exponential
//! backoff between attempts. Sans-IO: the forward phase (`forward`) owns the attempts and asks
//! here what to do with each outcome.

use std::time::Duration;

use amesh_proto::amesh::l7::v1 as pb;
use http::StatusCode;
use rand::Rng;

use crate::policy::duration;

/// Envoy's default backoff base interval.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Request bodies up to this size are kept to replay on a retry (Envoy buffers for retries
/// too); a larger body is sent once and never retried.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// `retryOn` conditions as bits.
pub mod on {
    pub const FIVE_XX: u32 = 1 << 0;
    pub const GATEWAY_ERROR: u32 = 1 << 1;
    pub const RESET: u32 = 1 << 2;
    pub const CONNECT_FAILURE: u32 = 1 << 3;
    pub const REFUSED_STREAM: u32 = 1 << 4;
    pub const RETRIABLE_4XX: u32 = 1 << 5;
    pub const RETRIABLE_STATUS_CODES: u32 = 1 << 6;
    pub const GRPC_CANCELLED: u32 = 1 << 7;
    pub const GRPC_DEADLINE_EXCEEDED: u32 = 1 << 8;
    pub const GRPC_RESOURCE_EXHAUSTED: u32 = 1 << 9;
    pub const GRPC_UNAVAILABLE: u32 = 1 << 10;
}

/// A converted `RetryPolicy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    /// [`on`] bits.
    pub retry_on: u32,
    pub retriable_status_codes: Vec<u16>,
    pub backoff_base: Duration,
    pub other_host: bool,
}

impl RetryPolicy {
    /// Converts the proto; `Err` names the field (relative to the retry policy) and the problem.
    pub fn from_proto(p: &pb::RetryPolicy) -> Result<Self, (String, String)> {
        let mut retry_on = 0;
        for (i, cond) in p.retry_on.iter().enumerate() {
            let bit = match cond.trim() {
                "5xx" => on::FIVE_XX,
                "gateway-error" => on::GATEWAY_ERROR,
                "reset" => on::RESET,
                "connect-failure" => on::CONNECT_FAILURE,
                "refused-stream" => on::REFUSED_STREAM,
                "retriable-4xx" => on::RETRIABLE_4XX,
                "retriable-status-codes" => on::RETRIABLE_STATUS_CODES,
                "cancelled" => on::GRPC_CANCELLED,
                "deadline-exceeded" => on::GRPC_DEADLINE_EXCEEDED,
                "resource-exhausted" => on::GRPC_RESOURCE_EXHAUSTED,
                "unavailable" => on::GRPC_UNAVAILABLE,
                other => {
                    return Err((
                        format!("retry_on[{i}]"),
                        format!("unknown retry condition {other:?}"),
                    ))
                }
            };
            retry_on |= bit;
        }
        let mut codes = Vec::with_capacity(p.retriable_status_codes.len());
        for (i, c) in p.retriable_status_codes.iter().enumerate() {
            let code = u16::try_from(*c)
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(|| {
                    (
                        format!("retriable_status_codes[{i}]"),
                        format!("{c} is not an HTTP status"),
                    )
                })?;
            codes.push(code);
        }
        // Istio: a bare status code in retryOn turns the condition on.
        if !codes.is_empty() {
            retry_on |= on::RETRIABLE_STATUS_CODES;
        }
        Ok(RetryPolicy {
            attempts: p.attempts,
            per_try_timeout: duration(p.per_try_timeout.as_ref())
                .map_err(|e| ("per_try_timeout".to_string(), e.to_string()))?,
            retry_on,
            retriable_status_codes: codes,
            backoff_base: duration(p.backoff_base.as_ref())
                .map_err(|e| ("backoff_base".to_string(), e.to_string()))?
                .unwrap_or(DEFAULT_BACKOFF_BASE),
            other_host: p.other_host,
        })
    }

    /// Whether an attempt that ended as `outcome` may be retried, and under which
    /// condition (the reason counted in metrics).
    pub fn retriable(&self, outcome: &Outcome) -> Option<&'static str> {
        let has = |bit: u32| self.retry_on & bit != 0;
        match outcome {
            Outcome::Response { status, grpc } => {
                let code = status.as_u16();
                if has(on::FIVE_XX) && code >= 500 {
                    return Some("5xx");
                }
                if has(on::GATEWAY_ERROR) && matches!(code, 502..=504) {
                    return Some("gateway-error");
                }
                if has(on::RETRIABLE_4XX) && code == 409 {
                    return Some("retriable-4xx");
                }
                if has(on::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&code) {
                    return Some("retriable-status-codes");
                }
                match grpc {
                    Some(1) if has(on::GRPC_CANCELLED) => Some("cancelled"),
                    Some(4) if has(on::GRPC_DEADLINE_EXCEEDED) => Some("deadline-exceeded"),
                    Some(8) if has(on::GRPC_RESOURCE_EXHAUSTED) => Some("resource-exhausted"),
                    Some(14) if has(on::GRPC_UNAVAILABLE) => Some("unavailable"),
                    _ => None,
                }
            }
            // Envoy counts any reset (connection failures included) under 5xx, gateway-error
            // and reset; connect-failure and refused-stream are narrower.
            Outcome::ConnectFailure => {
                if has(on::FIVE_XX | on::GATEWAY_ERROR | on::RESET) {
                    Some("reset")
                } else if has(on::CONNECT_FAILURE) {
                    Some("connect-failure")
                } else {
                    None
                }
            }
            Outcome::Reset { refused_stream } => {
                if has(on::FIVE_XX | on::GATEWAY_ERROR | on::RESET) {
                    Some("reset")
                } else if *refused_stream && has(on::REFUSED_STREAM) {
                    Some("refused-stream")
                } else {
                    None
                }
            }
            // A per-try timeout stands for a 504.
            Outcome::PerTryTimeout => {
                has(on::FIVE_XX | on::GATEWAY_ERROR).then_some("per-try-timeout")
            }
        }
    }
}

/// How one attempt ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived; `grpc` is the `grpc-status` of a trailers-only response.
    Response {
        status: StatusCode,
        grpc: Option<u32>,
    },
    /// The tunnel or the HTTP connection to the endpoint could not be set up.
    ConnectFailure,
    /// The request was sent and the connection or stream failed before response headers.
    Reset { refused_stream: bool },
    /// The attempt's own timeout passed.
    PerTryTimeout,
}

/// The wait before retry number `n` (1 = the first retry): a random duration in
/// `[0, min(base × 2^(n-1), 10 × base)]`, Envoy's fully jittered exponential backoff.
pub fn backoff(base: Duration, n: u32, rng: &mut impl Rng) -> Duration {
    let cap = base.saturating_mul(10);
    let exp = base.saturating_mul(1u32 << n.saturating_sub(1).min(20));
    let ceiling = exp.min(cap);
    let ns = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(conds: &[&str], codes: &[u32]) -> RetryPolicy {
        RetryPolicy::from_proto(&pb::RetryPolicy {
            attempts: 3,
            retry_on: conds.iter().map(|s| s.to_string()).collect(),
            retriable_status_codes: codes.to_vec(),
            ..Default::default()
        })
        .unwrap()
    }

    fn resp(code: u16) -> Outcome {
        Outcome::Response {
            status: StatusCode::from_u16(code).unwrap(),
            grpc: None,
        }
    }

    #[test]
    fn five_xx_retries_any_5xx_resets_and_timeouts() {
        let p = policy(&["5xx"], &[]);
        assert_eq!(p.retriable(&resp(500)), Some("5xx"));
        assert_eq!(p.retriable(&resp(503)), Some("5xx"));
        assert_eq!(p.retriable(&resp(404)), None);
        assert_eq!(p.retriable(&resp(200)), None);
        assert_eq!(p.retriable(&Outcome::ConnectFailure), Some("reset"));
        assert!(p
            .retriable(&Outcome::Reset {
                refused_stream: false
            })
            .is_some());
        assert!(p.retriable(&Outcome::PerTryTimeout).is_some());
    }

    #[test]
    fn gateway_error_only_502_to_504() {
        let p = policy(&["gateway-error"], &[]);
        assert_eq!(p.retriable(&resp(500)), None);
        assert_eq!(p.retriable(&resp(501)), None);
        for c in [502, 503, 504] {
            assert_eq!(p.retriable(&resp(c)), Some("gateway-error"));
        }
    }

    #[test]
    fn narrow_conditions() {
        let p = policy(&["connect-failure"], &[]);
        assert_eq!(
            p.retriable(&Outcome::ConnectFailure),
            Some("connect-failure")
        );
        assert_eq!(
            p.retriable(&Outcome::Reset {
                refused_stream: true
            }),
            None
        );
        assert_eq!(p.retriable(&resp(503)), None);
        assert_eq!(p.retriable(&Outcome::PerTryTimeout), None);

        let p = policy(&["refused-stream"], &[]);
        assert_eq!(
            p.retriable(&Outcome::Reset {
                refused_stream: true
            }),
            Some("refused-stream")
        );
        assert_eq!(
            p.retriable(&Outcome::Reset {
                refused_stream: false
            }),
            None
        );

        let p = policy(&["reset"], &[]);
        assert_eq!(p.retriable(&resp(503)), None);
        assert_eq!(p.retriable(&Outcome::ConnectFailure), Some("reset"));

        let p = policy(&["retriable-4xx"], &[]);
        assert_eq!(p.retriable(&resp(409)), Some("retriable-4xx"));
        assert_eq!(p.retriable(&resp(429)), None);
    }

    #[test]
    fn retriable_status_codes_turn_themselves_on() {
        let p = policy(&[], &[429, 418]);
        assert_eq!(p.retriable(&resp(429)), Some("retriable-status-codes"));
        assert_eq!(p.retriable(&resp(418)), Some("retriable-status-codes"));
        assert_eq!(p.retriable(&resp(500)), None);
    }

    #[test]
    fn grpc_statuses_from_a_trailers_only_response() {
        let p = policy(&["unavailable", "cancelled"], &[]);
        let grpc = |s| Outcome::Response {
            status: StatusCode::OK,
            grpc: Some(s),
        };
        assert_eq!(p.retriable(&grpc(14)), Some("unavailable"));
        assert_eq!(p.retriable(&grpc(1)), Some("cancelled"));
        assert_eq!(p.retriable(&grpc(4)), None);
        assert_eq!(p.retriable(&grpc(0)), None);
        let p = policy(&["deadline-exceeded", "resource-exhausted"], &[]);
        assert_eq!(p.retriable(&grpc(4)), Some("deadline-exceeded"));
        assert_eq!(p.retriable(&grpc(8)), Some("resource-exhausted"));
    }

    #[test]
    fn bad_conditions_and_codes_name_the_field() {
        let e = RetryPolicy::from_proto(&pb::RetryPolicy {
            retry_on: vec!["5xx".into(), "sometimes".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "retry_on[1]");
        assert!(e.1.contains("sometimes"));
        let e = RetryPolicy::from_proto(&pb::RetryPolicy {
            retriable_status_codes: vec![70000],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.0, "retriable_status_codes[0]");
    }

    #[test]
    fn default_backoff_base_is_envoys() {
        let p = policy(&["5xx"], &[]);
        assert_eq!(p.backoff_base, Duration::from_millis(25));
    }

    #[test]
    fn backoff_is_jittered_exponential_and_capped_at_ten_times_base() {
        let base = Duration::from_millis(25);
        let mut rng = rand::rng();
        for n in 1..=8u32 {
            let ceiling = (base * 2u32.pow(n - 1)).min(base * 10);
            let mut max_seen = Duration::ZERO;
            for _ in 0..2000 {
                let b = backoff(base, n, &mut rng);
                assert!(b <= ceiling, "retry {n}: {b:?} > {ceiling:?}");
                max_seen = max_seen.max(b);
            }
            // Jitter spans the whole range: the largest of 2000 draws is near the ceiling.
            assert!(max_seen * 10 >= ceiling * 9, "retry {n}: {max_seen:?}");
        }
        // Huge attempt numbers do not overflow.
        assert!(backoff(base, 1000, &mut rng) <= base * 10);
    }
}
