//! `[sim]` profiles: each field's simulator signal.

use std::str::FromStr;

use iomt_drivers::sim::Signal;
use toml::Spanned;

use super::{raw, Check, SimClock, SimSpec};
use crate::{catalog, ucum};

pub(super) fn sim_spec(
    s: &Spanned<raw::RawSim>,
    fields: &[Spanned<raw::RawField>],
    c: &mut Check<'_>,
) -> Option<SimSpec> {
    let mut signals = Vec::new();
    for f in fields {
        let f = f.get_ref();
        let (text, span) = match &f.signal {
            Some(s) => (s.get_ref().clone(), s.span()),
            None => (f.name.get_ref().clone(), f.name.span()),
        };
        match Signal::from_str(&text) {
            Ok(sig) => {
                let kind_unit = catalog::kind(f.vital.get_ref()).map(|k| k.unit);
                if kind_unit.is_some_and(|u| ucum::dimension(u) != ucum::dimension(sig.unit())) {
                    c.at(
                        span,
                        format!(
                            "simulator signal `{text}` (in `{}`) cannot feed vital `{}`",
                            sig.unit(),
                            f.vital.get_ref()
                        ),
                    );
                }
                signals.push((f.name.get_ref().clone(), sig));
            }
            Err(e) => c.at(
                span,
                format!("{e} (set `signal` when the field name is not a signal)"),
            ),
        }
    }
    Some(SimSpec {
        clock: s.get_ref().clock.unwrap_or(SimClock::Zoned),
        signals,
    })
}
