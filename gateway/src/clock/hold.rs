//! Readings held for the clock: what is kept with them, the decision at delivery (hold,
//! correct, or send marked uncertain) as a pure function, and the rewrite of the stored
//! Observation. No IO and no clock: the caller passes [`ClockNow`].
//!
//! The hold travels inside the stored (sealed) Observation JSON as one extra member,
//! [`HOLD_MEMBER`], which [`release`] removes before anything goes out. The Observation's
//! `id` and `identifier` are not changed by a correction: they were derived when the
//! reading was normalized, so a retry (even one whose correction differs by a
//! millisecond) still names the same resource and the conditional create absorbs it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::anchors::{offset_of, Anchor};
use crate::normalize::fhir_instant;

/// The member of a stored Observation that carries its [`TimeHold`]; never sent.
pub const HOLD_MEMBER: &str = "iomtGatewayTimeHold";

/// The code system of the mark on an Observation whose time could not be corrected.
pub const TIME_QUALITY_SYSTEM: &str = "urn:iomt-gateway:time-quality";
/// The code of that mark.
pub const UNSYNCHRONIZED_CODE: &str = "gateway-clock-unsynchronized";

/// What is kept with a reading received while the clock was not synchronized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeHold {
    /// The boot it was received in (`/proc/sys/kernel/random/boot_id`).
    pub boot: String,
    /// `CLOCK_BOOTTIME` at receipt, ms.
    pub boottime_ms: i64,
    /// The receipt time the (unsynchronized) wall clock gave, as written into `issued`, ms
    /// since the Unix epoch.
    pub wall_ms: i64,
}

/// The clock at the moment of a delivery pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockNow {
    /// Whether the system clock is synchronized.
    pub synchronized: bool,
    /// This boot's id.
    pub boot: Arc<str>,
    /// `CLOCK_BOOTTIME` now, ms.
    pub boottime_ms: i64,
    /// The wall clock now, ms since the Unix epoch.
    pub wall_ms: i64,
    /// The anchors of boots whose clock was synchronized (`anchors.rs`).
    pub anchors: Arc<Vec<Anchor>>,
}

/// What becomes of a held row now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Not yet: the clock is not synchronized and the wait is not over.
    Hold,
    /// Send it with this receipt time (the clock is synchronized, same boot).
    Correct {
        /// The corrected receipt time, ms since the Unix epoch.
        receipt_ms: i64,
    },
    /// Send it with its times as they are, marked uncertain: the wait is over while the
    /// clock is still not synchronized, or the row comes from an earlier boot whose clock
    /// was never seen synchronized.
    Uncertain,
}

/// Decides what becomes of a held row (see the module doc of `clock`).
pub fn decide(hold: &TimeHold, now: &ClockNow, wait_ms: i64) -> Release {
    let same_boot = !hold.boot.is_empty() && *hold.boot == *now.boot;
    let waited = now.boottime_ms.saturating_sub(hold.boottime_ms);
    let anchored = offset_of(&now.anchors, &hold.boot).filter(|_| !same_boot);
    match (now.synchronized, same_boot, anchored) {
        (true, true, _) => Release::Correct {
            receipt_ms: now.wall_ms.saturating_sub(waited.max(0)),
        },
        // An earlier boot whose clock was synchronized later: its anchor places the row.
        (_, false, Some(offset_ms)) => Release::Correct {
            receipt_ms: hold.boottime_ms.saturating_add(offset_ms),
        },
        (false, true, _) if waited < wait_ms => Release::Hold,
        _ => Release::Uncertain,
    }
}

/// The stored Observation `json` ready to send, as `release` decided: the hold member
/// removed; for [`Release::Correct`], `issued` (and `effectiveDateTime` when it was the
/// receipt time) set to the corrected receipt time; for [`Release::Uncertain`], the
/// times kept and the Observation marked (a `meta.tag` a backend can search for and a
/// `note` a clinician reads). `Release::Hold` returns it unchanged but for the member.
/// The members keep their order (`resourceType` first).
pub fn release(json: &RawValue, release: Release) -> Result<Box<RawValue>, String> {
    let invalid = |e: serde_json::Error| format!("stored JSON is invalid: {e}");
    let Ordered(mut members) = serde_json::from_str(json.get()).map_err(invalid)?;
    members.retain(|(k, _)| k != HOLD_MEMBER);
    let raw = |v: &Value| serde_json::value::to_raw_value(v).map_err(|e| e.to_string());
    match release {
        Release::Hold => {}
        Release::Correct { receipt_ms } => {
            let receipt = DateTime::<Utc>::from_timestamp_millis(receipt_ms)
                .ok_or_else(|| format!("corrected receipt time {receipt_ms} ms is out of range"))?;
            let text = raw(&Value::String(fhir_instant(receipt)))?;
            let issued = members
                .iter()
                .find(|(k, _)| k == "issued")
                .map(|(_, v)| v.get().to_string());
            for (k, v) in members.iter_mut() {
                let from_receipt = k == "effectiveDateTime" && Some(v.get()) == issued.as_deref();
                if k == "issued" || from_receipt {
                    *v = text.clone();
                }
            }
        }
        Release::Uncertain => {
            let tag = json!({
                "system": TIME_QUALITY_SYSTEM,
                "code": UNSYNCHRONIZED_CODE,
                "display": "Time uncertain: the gateway's clock was not synchronized"
            });
            let note = json!({
                "text": "Time uncertain: the gateway's clock was not synchronized when this reading was received and could not be corrected afterwards; effectiveDateTime and issued may be wrong."
            });
            match members.iter_mut().find(|(k, _)| k == "meta") {
                Some((_, meta)) => {
                    let mut m: Value = serde_json::from_str(meta.get()).map_err(invalid)?;
                    if let Some(tags) = m
                        .as_object_mut()
                        .map(|m| m.entry("tag").or_insert_with(|| json!([])))
                        .and_then(Value::as_array_mut)
                    {
                        tags.push(tag);
                    }
                    *meta = raw(&m)?;
                }
                None => {
                    let at = members
                        .iter()
                        .position(|(k, _)| k == "id")
                        .map_or(0, |i| i + 1);
                    members.insert(at, ("meta".into(), raw(&json!({ "tag": [tag] }))?));
                }
            }
            match members.iter_mut().find(|(k, _)| k == "note") {
                Some((_, notes)) => {
                    let mut n: Value = serde_json::from_str(notes.get()).map_err(invalid)?;
                    if let Some(n) = n.as_array_mut() {
                        n.push(note);
                    }
                    *notes = raw(&n)?;
                }
                None => members.push(("note".into(), raw(&json!([note]))?)),
            }
        }
    }
    let mut out = String::with_capacity(json.get().len() + 512);
    out.push('{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(k).map_err(|e| e.to_string())?);
        out.push(':');
        out.push_str(v.get());
    }
    out.push('}');
    RawValue::from_string(out).map_err(|e| e.to_string())
}

/// A JSON object's members in their order, each value kept as written.
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Ordered, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Box<RawValue>>()? {
                    members.push(member);
                }
                Ok(Ordered(members))
            }
        }
        d.deserialize_map(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold() -> TimeHold {
        TimeHold {
            boot: "boot-a".into(),
            boottime_ms: 10_000,
            wall_ms: 1_000,
        }
    }

    fn now(synchronized: bool, boot: &str, boottime_ms: i64) -> ClockNow {
        ClockNow {
            synchronized,
            boot: boot.into(),
            boottime_ms,
            wall_ms: 1_700_000_000_000,
            anchors: Arc::new(vec![Anchor {
                boot: "boot-c".into(),
                offset_ms: 1_600_000_000_000,
            }]),
        }
    }

    #[test]
    fn a_held_row_waits_then_goes_out_uncertain_while_the_clock_stays_unsynchronized() {
        assert_eq!(
            decide(&hold(), &now(false, "boot-a", 69_999), 60_000),
            Release::Hold
        );
        assert_eq!(
            decide(&hold(), &now(false, "boot-a", 70_000), 60_000),
            Release::Uncertain
        );
    }

    #[test]
    fn once_synchronized_the_receipt_time_is_now_minus_the_boottime_elapsed() {
        assert_eq!(
            decide(&hold(), &now(true, "boot-a", 15_000), 60_000),
            Release::Correct {
                receipt_ms: 1_700_000_000_000 - 5_000
            }
        );
    }

    #[test]
    fn a_row_from_an_earlier_boot_whose_clock_was_synchronized_later_is_placed_by_its_anchor() {
        let mut h = hold();
        h.boot = "boot-c".into();
        for synchronized in [true, false] {
            assert_eq!(
                decide(&h, &now(synchronized, "boot-b", 15_000), 60_000),
                Release::Correct {
                    receipt_ms: 1_600_000_000_000 + 10_000
                }
            );
        }
    }

    #[test]
    fn a_row_from_an_earlier_boot_cannot_be_corrected_and_goes_out_uncertain() {
        assert_eq!(
            decide(&hold(), &now(true, "boot-b", 15_000), 60_000),
            Release::Uncertain
        );
        assert_eq!(
            decide(&hold(), &now(false, "boot-b", 15_000), 60_000),
            Release::Uncertain
        );
    }

    fn stored(effective: &str) -> Box<RawValue> {
        // As the pipeline stores it: the Observation's members in order, the hold last.
        RawValue::from_string(format!(
            r#"{{"resourceType":"Observation","id":"x","effectiveDateTime":"{effective}","issued":"1970-01-01T00:00:01Z","{HOLD_MEMBER}":{}}}"#,
            serde_json::to_string(&hold()).unwrap()
        ))
        .unwrap()
    }

    #[test]
    fn a_correction_rewrites_issued_and_an_effective_time_taken_from_the_receipt() {
        let out = release(
            &stored("1970-01-01T00:00:01Z"),
            Release::Correct {
                receipt_ms: 1_700_000_000_500,
            },
        )
        .unwrap();
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["issued"], "2023-11-14T22:13:20.500Z");
        assert_eq!(v["effectiveDateTime"], "2023-11-14T22:13:20.500Z");
        assert!(v.get(HOLD_MEMBER).is_none());
        assert_eq!(v["id"], "x", "the id never changes");
    }

    #[test]
    fn a_correction_keeps_a_device_time_and_an_uncertain_row_is_marked() {
        let device = "2023-11-14T20:00:00Z";
        let out = release(&stored(device), Release::Correct { receipt_ms: 0 }).unwrap();
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["effectiveDateTime"], device);
        let out = release(&stored(device), Release::Uncertain).unwrap();
        assert!(out
            .get()
            .starts_with(r#"{"resourceType":"Observation","id":"x","meta""#));
        let v: Value = serde_json::from_str(out.get()).unwrap();
        assert_eq!(v["meta"]["tag"][0]["code"], UNSYNCHRONIZED_CODE);
        assert!(v["note"][0]["text"].as_str().unwrap().contains("uncertain"));
        assert_eq!(v["issued"], "1970-01-01T00:00:01Z");
        assert!(v.get(HOLD_MEMBER).is_none());
    }
}
