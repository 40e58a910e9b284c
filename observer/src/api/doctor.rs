//! What `/v1/doctor` answers: one check per thing an operator would look
//! at by hand, with its verdict, evidence and a hint.

use serde::{Deserialize, Serialize};

/// Whether anything is wrong (the CLI's exit code).
pub fn healthy(checks: &[Check]) -> bool {
    checks
        .iter()
        .all(|c| matches!(c.verdict, Verdict::Ok | Verdict::Skip))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Not applicable here (no IPVS, no BIRD, ...).
    Skip,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub summary: String,
    /// What was found wrong (or, when all is well, what was looked at).
    #[serde(default)]
    pub evidence: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}
