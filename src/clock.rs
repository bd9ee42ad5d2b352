//! The engine's clock: wall time that follows tokio's clock, so that a test
//! which pauses and advances tokio time moves lease deadlines and backoffs
//! with it, and production gets the system time.

use chrono::{DateTime, Utc};
use loraflow_core::clock::Clock;
use tokio::time::Instant;

/// Wall time at creation, plus tokio time elapsed since.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    base_wall: DateTime<Utc>,
    base: Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            base_wall: Utc::now(),
            base: Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed = Instant::now().saturating_duration_since(self.base);
        self.base_wall + chrono::Duration::from_std(elapsed).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = TokioClock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - t0, chrono::Duration::seconds(90));
    }
}
