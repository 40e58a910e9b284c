//! `observer doctor`: the daemon's checks of this node, with evidence and
//! hints; exits non-zero when any check warns or fails.

use anyhow::{Result, bail};

use super::QueryArgs;
use crate::{
    api::{Check, Verdict, healthy},
    term::{
        Output,
        style::{self, Paint, paint},
    },
};

pub async fn doctor(args: QueryArgs) -> Result<()> {
    let checks: Vec<Check> = args.target.client()?.get("/v1/doctor").await?;
    style::set(args.output != Output::Json && style::wanted());
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
        _ => print!("{}", render(&checks)),
    }
    if !healthy(&checks) {
        let bad = checks
            .iter()
            .filter(|c| matches!(c.verdict, Verdict::Warn | Verdict::Fail))
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>();
        bail!("doctor found problems: {}", bad.join(", "));
    }
    Ok(())
}

fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = match c.verdict {
            Verdict::Ok => paint(Paint::Good, "ok  "),
            Verdict::Skip => paint(Paint::Dim, "skip"),
            Verdict::Warn => paint(Paint::Warn, "WARN"),
            Verdict::Fail => paint(Paint::Bad, "FAIL"),
        };
        out.push_str(&format!("{mark}  {:<28} {}\n", c.name, c.summary));
        for e in &c.evidence {
            out.push_str(&format!("        - {e}\n"));
        }
        if let Some(h) = &c.hint {
            out.push_str(&format!("        hint: {h}\n"));
        }
    }
    out
}
