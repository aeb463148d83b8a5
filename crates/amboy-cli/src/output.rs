//! Printing: aligned tables for people, JSON for scripts.

use std::io::IsTerminal as _;

use amboy_core::JobInfo;
use comfy_table::presets::NOTHING;
use serde::Serialize;

/// Where results go, and in which form.
#[derive(Debug)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    pub(crate) fn new(json: bool) -> Self {
        Output { json }
    }

    /// Prints `value` as JSON, or the table `table` makes.
    pub(crate) fn print<T: Serialize>(&self, value: &T, table: impl FnOnce() -> Table) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).expect("results encode")
            );
        } else {
            println!("{}", table().render());
        }
    }

    /// Prints `json`, or `text` for people.
    pub(crate) fn message(&self, json: serde_json::Value, text: &str) {
        if self.json {
            println!("{json}");
        } else {
            println!("{text}");
        }
    }

    /// A spinner on standard error while waiting, when it is a terminal and the output is for
    /// people.
    pub(crate) fn progress(&self, what: &str) -> Option<indicatif::ProgressBar> {
        if self.json || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(what.to_owned());
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Some(bar)
    }
}

/// A table with aligned columns.
#[derive(Debug)]
pub(crate) struct Table {
    table: comfy_table::Table,
    footer: Option<String>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        let mut table = comfy_table::Table::new();
        table.load_style(NOTHING).set_header(header.to_vec());
        Table {
            table,
            footer: None,
        }
    }

    pub(crate) fn rows(mut self, rows: impl IntoIterator<Item = Vec<String>>) -> Self {
        for row in rows {
            self.table.add_row(row);
        }
        self
    }

    pub(crate) fn footer(mut self, footer: String) -> Self {
        self.footer = Some(footer);
        self
    }

    fn render(&self) -> String {
        let lines: Vec<String> = self
            .table
            .lines()
            // Each cell is padded by a space on either side: the first column's left padding
            // goes, so that the table starts at the margin.
            .map(|line| {
                let line = line.trim_end();
                line.strip_prefix(' ').unwrap_or(line).to_owned()
            })
            .collect();
        let mut text = lines.join("\n");
        if let Some(footer) = &self.footer {
            text.push('\n');
            text.push_str(footer);
        }
        text
    }
}

/// A job's state in one word.
pub(crate) fn state_of(info: &JobInfo) -> &'static str {
    let status = &info.status;
    if status.expired {
        "expired"
    } else if status.in_progress {
        "in-progress"
    } else if status.completed && info.retry.should_retry() {
        "retrying"
    } else if status.completed {
        "completed"
    } else {
        "pending"
    }
}
