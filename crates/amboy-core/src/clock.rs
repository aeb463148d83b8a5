//! The wall clock of job metadata: [`now`] is `chrono::Utc::now()` at a lower cost.

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Utc};

/// Days from 0001-01-01 (chrono's day 1) to 1970-01-01.
const UNIX_EPOCH_DAY_FROM_CE: i64 = 719_163;

thread_local! {
    /// The last day this thread converted, so that most calls skip the calendar arithmetic.
    static DAY: Cell<Option<(u64, NaiveDate)>> = const { Cell::new(None) };
}

/// The current time, as `chrono::Utc::now()` returns it.
///
/// Queues stamp jobs several times each (created, started, locked, ended); converting the
/// system time to a calendar date is most of `Utc::now`'s cost, and the date changes once a
/// day, so each thread keeps the last one.
pub fn now() -> DateTime<Utc> {
    let Ok(since) = SystemTime::now().duration_since(UNIX_EPOCH) else {
        return Utc::now();
    };
    let secs = since.as_secs();
    let day = secs / 86_400;
    let date = DAY.with(|cached| match cached.get() {
        Some((cached_day, date)) if cached_day == day => Some(date),
        _ => {
            let days = i32::try_from(day as i64 + UNIX_EPOCH_DAY_FROM_CE).ok()?;
            let date = NaiveDate::from_num_days_from_ce_opt(days)?;
            cached.set(Some((day, date)));
            Some(date)
        }
    });
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt((secs % 86_400) as u32, since.subsec_nanos());
    match (date, time) {
        (Some(date), Some(time)) => {
            DateTime::from_naive_utc_and_offset(NaiveDateTime::new(date, time), Utc)
        }
        _ => Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_chrono() {
        for _ in 0..1000 {
            let before = Utc::now();
            let ours = now();
            let after = Utc::now();
            assert!(
                before <= ours && ours <= after,
                "{before} <= {ours} <= {after}"
            );
        }
    }

    #[test]
    fn converts_any_day_as_chrono_does() {
        // The conversion itself, checked against chrono over centuries.
        for day in (0u64..200_000).step_by(997) {
            let secs = day * 86_400 + 12_345;
            let expected = DateTime::from_timestamp(secs as i64, 678).unwrap();
            let date =
                NaiveDate::from_num_days_from_ce_opt((day as i64 + UNIX_EPOCH_DAY_FROM_CE) as i32)
                    .unwrap();
            let time =
                NaiveTime::from_num_seconds_from_midnight_opt((secs % 86_400) as u32, 678).unwrap();
            assert_eq!(
                DateTime::<Utc>::from_naive_utc_and_offset(NaiveDateTime::new(date, time), Utc),
                expected
            );
        }
    }
}
