//! Prosody comparison (placeholder).
use crate::report::ProsodyRow;
use crate::traffic::Bodies;
use crate::Settings;

pub fn run(_s: &Settings, _b: &Bodies) -> Result<Vec<ProsodyRow>, String> {
    Err("not yet".into())
}
