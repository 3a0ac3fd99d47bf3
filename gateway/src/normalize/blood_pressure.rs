//! The blood-pressure panel (LOINC 85354-9): systolic, diastolic and mean arterial
//! pressure of one measurement as components of one Observation.

use super::*;

/// The panel of one reading's pressures, each a component; `None` when, under
/// `reject`, every value of the panel was rejected (the rejections are counted in `out`).
pub(super) fn observation(
    members: &[(&Quantity, &FieldMapping)],
    effective: &str,
    sequence: &str,
    reading: &Reading,
    ctx: &Context,
    demo: bool,
    out: &mut Normalized,
) -> Option<Observation> {
    let mut components = Vec::new();
    let mut rejected_here = false;
    for key in ["systolic", "diastolic", "mean_arterial"] {
        let Some((q, m)) = members.iter().find(|(_, m)| m.kind.key == key) else {
            if key != "mean_arterial" {
                // The panel needs both; say the device did not report this one.
                let kind = catalog::kind(key)?;
                let m = FieldMapping {
                    name: key.into(),
                    kind,
                    loinc: kind.loinc.map(Into::into),
                    mdc: kind.mdc.map(Into::into),
                    plausible: kind.plausible,
                };
                components.push(Component {
                    code: code_of(&m),
                    value_quantity: None,
                    data_absent_reason: Some(CodeableConcept {
                        coding: vec![Coding::new(fhir::DATA_ABSENT_REASON, "unknown", "Unknown")],
                        text: None,
                    }),
                    interpretation: Vec::new(),
                });
            }
            continue;
        };
        let mut c = Component {
            code: code_of(m),
            value_quantity: None,
            data_absent_reason: None,
            interpretation: Vec::new(),
        };
        match value_of(q, m, ctx.out_of_range) {
            Err(r) => {
                out.rejections.push(r);
                rejected_here = true;
                c.data_absent_reason = Some(CodeableConcept {
                    coding: vec![Coding::new(fhir::DATA_ABSENT_REASON, "error", "Error")],
                    text: None,
                });
            }
            Ok(Value::Present {
                quantity,
                questionable: qq,
            }) => {
                c.value_quantity = Some(quantity);
                if qq {
                    c.interpretation.push(questionable());
                    out.flagged += 1;
                }
            }
            Ok(Value::Absent(reason)) => c.data_absent_reason = Some(reason),
        }
        components.push(c);
    }
    // With `reject`, a panel left with no value at all because its values were rejected
    // is dropped (each rejection is counted); one whose values were simply absent stays.
    if rejected_here && components.iter().all(|c| c.value_quantity.is_none()) {
        return None;
    }
    let names: Vec<&str> = members.iter().map(|(q, _)| q.name.as_str()).collect();
    let uuid = derived_uuid(&[ctx.device_pseudonym, &names.join("+"), effective, sequence]);
    let code = CodeableConcept {
        coding: vec![
            Coding::new(
                fhir::LOINC,
                catalog::BP_PANEL.code,
                catalog::BP_PANEL.display,
            ),
            Coding {
                system: fhir::MDC.into(),
                code: catalog::BP_PANEL_MDC.code.to_string(),
                display: Some(catalog::BP_PANEL_MDC.refid.into()),
            },
        ],
        text: Some("Blood pressure".into()),
    };
    let mut obs = skeleton(
        &uuid,
        Category::VitalSigns,
        Some(catalog::BP_PROFILE),
        code,
        effective,
        reading,
        ctx,
        demo,
    );
    obs.component = components;
    Some(obs)
}
