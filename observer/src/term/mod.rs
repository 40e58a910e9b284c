//! Output for people at a terminal, shared by the CLI verbs, the lab and
//! replay: the output format switch, aligned tables, colour, human units,
//! and the tables of the API's answers. Reads the API's types; knows
//! nothing of the daemon.

pub mod flows;
pub mod inventory;
pub mod style;
pub mod table;
pub mod units;

use clap::ValueEnum;

pub use self::{flows::FlowRow, table::table};

/// How a verb prints its answer (`-o`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A readable table.
    Table,
    /// A table with more columns.
    Wide,
    /// JSON, for scripts.
    Json,
}
