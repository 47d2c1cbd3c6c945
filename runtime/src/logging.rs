//! The engine's log sink: a `log::Log` that queues records in memory for Python to take.
//!
//! The engine's threads never take the GIL to log. A record at an enabled level is formatted and
//! pushed onto a bounded queue under a short mutex; a Python thread blocks (without the GIL) in
//! `take` and hands the records to `logging`. A disabled level costs one relaxed atomic load
//! (`log`'s global max level), which Python sets from the `wse` logger's effective level. When
//! the queue is full, records are dropped and counted, and the count is reported with the next
//! record taken: a flood of log lines never blocks the engine or grows memory without bound.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// Records waiting for Python before new ones are dropped.
pub const CAPACITY: usize = 10_000;

/// One record: level (Python's numbers: 10 debug ... 40 error), logger name and message.
pub type Record = (u8, &'static str, String);

struct Queue {
    records: VecDeque<Record>,
    dropped: u64,
    closed: bool,
}

struct Sink {
    queue: Mutex<Queue>,
    ready: Condvar,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| Sink {
        queue: Mutex::new(Queue { records: VecDeque::new(), dropped: 0, closed: false }),
        ready: Condvar::new(),
    })
}

/// Python's level number for a `log` level.
fn py_level(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 40,
        log::Level::Warn => 30,
        log::Level::Info => 20,
        log::Level::Debug | log::Level::Trace => 10,
    }
}

/// The Python logger a target maps to: targets of our own (`wse.access`, `wse.mesh`) as they
/// are, anything else (a dependency's module path) under `wse.engine`.
fn logger_name(target: &str) -> &'static str {
    match target {
        "wse.access" => "wse.access",
        "wse.mesh" => "wse.mesh",
        "wse.tls" => "wse.tls",
        _ => "wse.engine",
    }
}

struct Logger;

impl log::Log for Logger {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let msg = record.args().to_string();
        let s = sink();
        let mut q = s.queue.lock();
        if q.closed {
            return;
        }
        if q.records.len() >= CAPACITY {
            q.dropped += 1;
            return;
        }
        q.records.push_back((py_level(record.level()), logger_name(record.target()), msg));
        drop(q);
        s.ready.notify_one();
    }

    fn flush(&self) {}
}

static LOGGER: Logger = Logger;

/// Installs the sink as the process's `log` logger (once; later calls do nothing). Nothing is
/// recorded until `set_level` enables a level.
pub fn install() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Off);
    }
}

/// Enables records at Python level `level` and above (10 debug, 20 info, 30 warning, 40
/// error; above 40 turns the engine's logging off).
pub fn set_level(level: i32) {
    let filter = match level {
        i32::MIN..=10 => log::LevelFilter::Debug,
        11..=20 => log::LevelFilter::Info,
        21..=30 => log::LevelFilter::Warn,
        31..=40 => log::LevelFilter::Error,
        _ => log::LevelFilter::Off,
    };
    log::set_max_level(filter);
}

/// Waits up to `timeout` for records and takes them all, with how many were dropped since the
/// last call. Returns at once, empty, once `close` was called.
pub fn take(timeout: Duration) -> (Vec<Record>, u64) {
    let s = sink();
    let mut q = s.queue.lock();
    if q.records.is_empty() && q.dropped == 0 && !q.closed {
        s.ready.wait_for(&mut q, timeout);
    }
    let dropped = std::mem::take(&mut q.dropped);
    (q.records.drain(..).collect(), dropped)
}

/// Ends logging to Python (interpreter exit): wakes the taker, and later records are ignored.
pub fn close() {
    let s = sink();
    s.queue.lock().closed = true;
    log::set_max_level(log::LevelFilter::Off);
    s.ready.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_at_enabled_levels_are_queued_in_order_and_the_rest_cost_nothing() {
        // Other tests may log meanwhile (the logger is global): look only at this test's lines.
        let mine = |records: Vec<Record>| records.into_iter().filter(|r| r.2.starts_with("logging-test")).collect::<Vec<_>>();
        install();
        set_level(20);
        log::debug!(target: "wse.access", "logging-test not recorded");
        log::info!(target: "wse.access", "logging-test first {}", 1);
        log::warn!("logging-test second");
        let (got, dropped) = take(Duration::from_millis(10));
        assert_eq!(dropped, 0);
        assert_eq!(
            mine(got),
            vec![(20, "wse.access", "logging-test first 1".to_string()), (30, "wse.engine", "logging-test second".to_string())]
        );
        set_level(50);
        log::error!("logging-test off");
        assert!(mine(take(Duration::from_millis(1)).0).is_empty());
    }
}
