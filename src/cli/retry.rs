//! Retrying a call that is safe to repeat. `submit` sends a request id with
//! every `CreateJob` (and `--resume` one with `ResumeJob`), so the server
//! answers a repeat with the job the first try made, finishing its
//! submission if that try stopped halfway. A call that got no answer (the
//! server down or restarting, the connection reset, the deadline passed) is
//! therefore tried again with the same id, a bounded number of times with
//! growing pauses, each retry said on stderr.

use std::future::Future;
use std::time::Duration;

use tonic::{Code, Status};

/// The pause before the first retry; each next one doubles, up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(8);

/// How a retried call ended without an answer to use.
#[derive(Debug)]
pub enum Failure {
    /// The server answered with a refusal. `retried`: an earlier try got no
    /// answer, so the job may exist from it.
    Refused { status: Status, retried: bool },
    /// No try got an answer.
    NoAnswer { status: Status, tries: u32 },
}

/// Whether `status` says the call got no answer from the server, so that
/// trying again can help: the server unreachable or going away
/// (`UNAVAILABLE`), the deadline passed, the connection reset under the call
/// (tonic's `UNKNOWN` "transport error", h2's `CANCEL`), or a write that lost
/// a race (`ABORTED`).
pub fn no_answer(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
    )
}

/// Run `call` until it is answered, retrying up to `retries` times when it
/// gets no answer. `request_id` is named in each retry's notice.
pub async fn with_retries<T, F, Fut>(
    retries: u32,
    request_id: &str,
    mut call: F,
) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut pause = FIRST_PAUSE;
    let mut retried = 0;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(status) if no_answer(&status) && retried < retries => {
                retried += 1;
                eprintln!(
                    "no answer from the server ({:?}: {}); retry {retried} of {retries} in {} ms with request id {request_id}",
                    status.code(),
                    status.message(),
                    pause.as_millis()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(status) if no_answer(&status) => {
                return Err(Failure::NoAnswer {
                    status,
                    tries: retried + 1,
                });
            }
            Err(status) => {
                return Err(Failure::Refused {
                    status,
                    retried: retried > 0,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_call_without_answer_is_retried_until_answered() {
        let tries = Cell::new(0);
        let answer = with_retries(3, "r", || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n < 3 {
                    Err(Status::unavailable("connection refused"))
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(answer, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded() {
        let tries = Cell::new(0);
        let failure = with_retries(2, "r", || {
            tries.set(tries.get() + 1);
            async { Err::<(), _>(Status::unknown("transport error")) }
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), 3);
        assert!(
            matches!(failure, Failure::NoAnswer { tries: 3, .. }),
            "{failure:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_not_retried_but_says_whether_a_try_went_unanswered() {
        let tries = Cell::new(0);
        let failure = with_retries(5, "r", || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                if n == 1 {
                    Err::<(), _>(Status::deadline_exceeded("slow"))
                } else {
                    Err(Status::invalid_argument("bad subject"))
                }
            }
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), 2);
        assert!(
            matches!(&failure, Failure::Refused { retried: true, status } if status.code() == Code::InvalidArgument),
            "{failure:?}"
        );
    }
}
