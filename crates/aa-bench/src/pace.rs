//! Sends on a fixed schedule: clients share a total rate, each sending on its own thread at
//! a fixed period, staggered so their sends interleave. A send that is late (a slow answer
//! held the thread) goes at once; how late it went is passed on, so a slipped schedule shows.

use std::time::{Duration, Instant};

use crate::BenchError;

/// When each of several clients sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    clients: usize,
    period: Duration,
    origin: Instant,
    total: Duration,
}

impl Schedule {
    /// `rate` sends a second from `clients` clients together, from `origin` for `total`.
    pub(crate) fn new(
        clients: usize,
        rate: f64,
        origin: Instant,
        total: Duration,
    ) -> Result<Schedule, BenchError> {
        if clients == 0 || !rate.is_finite() || rate <= 0.0 || total.is_zero() {
            return Err(BenchError::Invalid(
                "clients, rate and duration must be positive".into(),
            ));
        }
        let period = Duration::try_from_secs_f64(clients as f64 / rate)
            .map_err(|e| BenchError::Invalid(format!("rate {rate}/s: {e}")))?;
        Ok(Schedule {
            clients,
            period,
            origin,
            total,
        })
    }

    /// Calls `send(due, lateness)` for each of client `index`'s sends, on this thread, until
    /// the schedule ends or `send` returns false; `due` is counted from the origin.
    pub(crate) fn run(&self, index: usize, mut send: impl FnMut(Duration, Duration) -> bool) {
        let offset = self.period.mul_f64(index as f64 / self.clients as f64);
        for k in 0u32.. {
            let due = offset + self.period * k;
            if due >= self.total {
                break;
            }
            let now = self.origin.elapsed();
            if due > now {
                std::thread::sleep(due - now);
            }
            if !send(due, self.origin.elapsed().saturating_sub(due)) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clients_share_the_rate_and_interleave() {
        let origin = Instant::now();
        let schedule = Schedule::new(4, 400.0, origin, Duration::from_millis(100)).unwrap();
        let mut dues = Vec::new();
        for index in 0..4 {
            schedule.run(index, |due, _| {
                dues.push(due);
                true
            });
        }
        // 400/s over 0.1 s: 40 sends, 10 a client, every 10 ms, client i offset i × 2.5 ms.
        assert_eq!(dues.len(), 40);
        dues.sort();
        dues.dedup();
        assert_eq!(dues.len(), 40);
        assert_eq!(dues[1], Duration::from_micros(2_500));
    }

    #[test]
    fn a_client_can_stop_early() {
        let schedule = Schedule::new(1, 1000.0, Instant::now(), Duration::from_secs(60)).unwrap();
        let mut sent = 0;
        schedule.run(0, |_, _| {
            sent += 1;
            sent < 3
        });
        assert_eq!(sent, 3);
    }

    #[test]
    fn a_rate_of_nothing_is_refused() {
        assert!(Schedule::new(1, 0.0, Instant::now(), Duration::from_secs(1)).is_err());
        assert!(Schedule::new(1, f64::NAN, Instant::now(), Duration::from_secs(1)).is_err());
        assert!(Schedule::new(0, 10.0, Instant::now(), Duration::from_secs(1)).is_err());
    }
}
