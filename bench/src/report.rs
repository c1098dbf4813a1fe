//! A scenario's result: named figures → a human summary and the JSON line of docs/contract.md §6;
//! latency figures from HDR histograms.

use hdrhistogram::Histogram;
use serde_json::{Map, Value};

/// Named figures of one scenario run, in the order they were added.
#[derive(Debug, Clone)]
pub(crate) struct Report {
    scenario: String,
    figures: Vec<(String, Value)>,
}

impl Report {
    /// An empty report for `scenario`.
    pub(crate) fn new(scenario: &str) -> Self {
        Report {
            scenario: scenario.to_owned(),
            figures: Vec::new(),
        }
    }

    /// Adds a figure; `name` is snake_case with its unit as suffix (`_per_sec`, `_us`, ...).
    pub(crate) fn figure(&mut self, name: &str, value: impl Into<Value>) -> &mut Self {
        self.figures.push((name.to_owned(), value.into()));
        self
    }

    /// A figure by name.
    #[cfg(test)]
    pub(crate) fn get(&self, name: &str) -> Option<&Value> {
        self.figures.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The JSON object of docs/contract.md §6: scenario, figures, machine.
    pub(crate) fn to_json(&self) -> Value {
        let mut map = Map::new();
        map.insert("scenario".into(), Value::String(self.scenario.clone()));
        for (name, value) in &self.figures {
            map.insert(name.clone(), value.clone());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        map.insert("machine".into(), Value::String(format!("{cores} cores")));
        Value::Object(map)
    }

    /// Prints the human summary, then the JSON object as the last line, on stdout.
    pub(crate) fn print(&self) {
        println!("scenario {}", self.scenario);
        let width = self.figures.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        for (name, value) in &self.figures {
            let shown = match value.as_f64() {
                Some(v) if v.fract() != 0.0 => format!("{v:.3}"),
                _ => value.to_string(),
            };
            println!("  {name:<width$}  {shown}");
        }
        println!("{}", self.to_json());
    }
}

/// A histogram of microseconds from 1 µs to 60 s at 3 significant digits.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    histogram(3)
}

/// A histogram of microseconds from 1 µs to 60 s at `digits` significant digits (1 to 5).
#[allow(
    clippy::expect_used,
    reason = "the bounds are constants and every caller passes 1 to 5 digits"
)]
pub(crate) fn histogram(digits: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, digits).expect("constant, valid histogram bounds")
}

/// Adds `<prefix>_p50_us`, `_p99_us` and `_max_us` from a histogram of microseconds.
pub(crate) fn latency_figures(report: &mut Report, prefix: &str, hist: &Histogram<u64>) {
    report.figure(&format!("{prefix}_p50_us"), hist.value_at_quantile(0.50));
    report.figure(&format!("{prefix}_p99_us"), hist.value_at_quantile(0.99));
    report.figure(&format!("{prefix}_max_us"), hist.max());
}
