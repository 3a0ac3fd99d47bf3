//! Where each boot's uptime clock stood against true time: the offset between the wall
//! clock and `CLOCK_BOOTTIME`, taken when the clock was first seen synchronized in that
//! boot. Kept in a small JSON file next to the outbox (`clock-anchors.json`, replaced
//! atomically, the newest [`KEPT`] boots), so a row held in a boot whose clock was
//! synchronized later is corrected even when it is delivered after the machine restarted.
//! Written once per boot (at the first synchronized look of a run, when the boot has no
//! anchor yet), never on a timer.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How many boots' anchors are kept.
pub const KEPT: usize = 16;

/// One boot's anchor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// The boot id.
    pub boot: String,
    /// Wall clock minus `CLOCK_BOOTTIME`, ms, while the clock was synchronized.
    pub offset_ms: i64,
}

/// The anchors in `path`; none when the file is missing or unreadable (logged).
pub fn load(path: &Path) -> Vec<Anchor> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "the clock anchors file is damaged; it is started again (rows held in earlier boots go out marked uncertain)");
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the clock anchors file");
            Vec::new()
        }
    }
}

/// Adds `anchor` unless its boot has one (the first synchronized look of a boot wins),
/// keeps the newest [`KEPT`], and writes the file when it changed. Returns whether it
/// changed.
pub fn record(path: Option<&Path>, anchors: &mut Vec<Anchor>, anchor: Anchor) -> bool {
    if anchor.boot.is_empty() || anchors.iter().any(|a| a.boot == anchor.boot) {
        return false;
    }
    anchors.push(anchor);
    let excess = anchors.len().saturating_sub(KEPT);
    anchors.drain(..excess);
    if let Some(path) = path {
        if let Err(e) = save(path, anchors) {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the clock anchors file; rows held in this boot and delivered after a restart go out marked uncertain");
        }
    }
    true
}

fn save(path: &Path, anchors: &[Anchor]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(anchors)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The offset of `boot`, if it was anchored.
pub fn offset_of(anchors: &[Anchor], boot: &str) -> Option<i64> {
    anchors
        .iter()
        .find(|a| !boot.is_empty() && a.boot == boot)
        .map(|a| a.offset_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor(boot: &str, offset_ms: i64) -> Anchor {
        Anchor {
            boot: boot.into(),
            offset_ms,
        }
    }

    #[test]
    fn a_boots_first_anchor_is_kept_written_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock-anchors.json");
        let mut anchors = load(&path);
        assert!(anchors.is_empty());
        assert!(record(Some(&path), &mut anchors, anchor("a", 5)));
        assert!(!record(Some(&path), &mut anchors, anchor("a", 9)));
        assert_eq!(load(&path), [anchor("a", 5)]);
        assert_eq!(offset_of(&anchors, "a"), Some(5));
        assert_eq!(offset_of(&anchors, "b"), None);
    }

    #[test]
    fn only_the_newest_boots_are_kept_and_a_damaged_file_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clock-anchors.json");
        let mut anchors = Vec::new();
        for i in 0..KEPT + 3 {
            record(Some(&path), &mut anchors, anchor(&format!("boot-{i}"), 0));
        }
        let kept = load(&path);
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].boot, "boot-3");
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(&path).is_empty());
    }
}
