//! Bundles bounded in bytes (an uplink's [`super::Uplink::max_bundle_bytes`], the MQTT
//! uplink's `max_message_bytes`): which rows of a batch go in which Bundle, and how
//! many rows to fetch next so that a fetch holds about one Bundle. The rules are pure
//! functions, like [`super::plan`]'s; the loop's two methods at the end apply them.

use std::collections::HashSet;

use super::Loop;
use crate::outbox::Fetched;
use crate::uplink::bundle;

/// One row's share of a Bundle, for [`chunks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share<'a> {
    /// Its index in the batch.
    pub row: usize,
    /// Bytes of its entry (the Observation and the request around it).
    pub bytes: usize,
    /// The Device it references and the bytes of that Device's entry, which a Bundle
    /// carries once however many of its rows reference it.
    pub device: Option<(&'a str, usize)>,
}

/// Splits rows, in their order, into Bundles of at most `max` bytes, each starting at
/// `base` bytes (the Bundle around its entries and the gateway's Device entry). A row
/// that does not fit alone goes alone. Returns each Bundle's rows and its bytes.
pub fn chunks(rows: &[Share<'_>], base: usize, max: usize) -> Vec<(Vec<usize>, usize)> {
    let mut out: Vec<(Vec<usize>, usize)> = Vec::new();
    let mut rows_here: Vec<usize> = Vec::new();
    let mut devices_here: HashSet<&str> = HashSet::new();
    let mut bytes = base;
    for share in rows {
        let added = |devices_here: &HashSet<&str>| {
            let device = share
                .device
                .filter(|(id, _)| !devices_here.contains(id))
                .map_or(0, |(_, n)| n);
            share.bytes.saturating_add(device)
        };
        if !rows_here.is_empty() && bytes.saturating_add(added(&devices_here)) > max {
            out.push((std::mem::take(&mut rows_here), bytes));
            devices_here.clear();
            bytes = base;
        }
        bytes = bytes.saturating_add(added(&devices_here));
        if let Some((id, _)) = share.device {
            devices_here.insert(id);
        }
        rows_here.push(share.row);
    }
    if !rows_here.is_empty() {
        out.push((rows_here, bytes));
    }
    out
}

/// How many rows the next fetch asks for, when Bundles are bounded in bytes: learned
/// from the last pass, so that a fetch holds about one Bundle's rows (the rows fetched
/// ahead are held in memory too). `fit`: what the last pass learned (`None`: nothing
/// yet, the batch size). `chunked`: the last pass's Bundles (rows, bytes), `fetched`
/// how many rows it fetched, `limit` how many it asked for.
pub fn fit_after(
    fit: Option<usize>,
    chunked: &[(Vec<usize>, usize)],
    fetched: usize,
    limit: usize,
    max: usize,
    batch: usize,
) -> Option<usize> {
    match chunked {
        // More than one Bundle: the first held as many rows as fit.
        [(first, _), _, ..] => Some(first.len().clamp(1, batch)),
        // One Bundle of a full fetch: more rows may fit, in proportion to the room left.
        [(rows, bytes)] if fetched >= limit && *bytes > 0 => {
            let estimate = rows.len().saturating_mul(max) / *bytes;
            Some(estimate.clamp(rows.len().max(1), batch))
        }
        _ => fit,
    }
}

impl Loop<'_> {
    /// How many rows a fetch asks for: the batch size, or with Bundles bounded in bytes
    /// about one Bundle's rows, as the last pass found.
    pub(super) fn fetch_limit(&self, batch: usize, max_bytes: Option<usize>) -> usize {
        match max_bytes {
            Some(_) => self.fit.unwrap_or(batch).clamp(1, batch),
            None => batch,
        }
    }

    /// The rows of `sendable` in Bundles of at most `max` bytes (each entry measured as
    /// `bundle::encoded_len` measures it: the resource as stored and the request around
    /// it).
    pub(super) fn chunk(
        &self,
        fetched: &Fetched,
        sendable: &[usize],
        max: usize,
    ) -> Vec<(Vec<usize>, usize)> {
        let gateway = &self.gateway[usize::from(!self.clock.synchronized())];
        let base = bundle::base_len((&gateway.0, &gateway.1));
        let shares: Vec<Share<'_>> = sendable
            .iter()
            .map(|&i| {
                let row = &fetched.rows[i];
                let bytes = row.observation.as_ref().map_or(0, |o| {
                    bundle::observation_entry_len(&o.id, o.identifier.as_deref(), &o.json)
                });
                Share {
                    row: i,
                    bytes,
                    device: fetched.devices.get(row.device_id.as_str()).map(|d| {
                        (
                            row.device_id.as_str(),
                            bundle::device_entry_len(&row.device_id, d),
                        )
                    }),
                }
            })
            .collect();
        chunks(&shares, base, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn share(row: usize, bytes: usize, device: &str) -> Share<'_> {
        Share {
            row,
            bytes,
            device: Some((device, 50)),
        }
    }

    #[test]
    fn rows_go_in_order_into_bundles_that_stay_within_the_bound() {
        // Base 100; each row 100 bytes; each new Device in a Bundle 50 more.
        let rows = [
            share(0, 100, "a"),
            share(1, 100, "a"),
            share(2, 100, "b"),
            share(3, 100, "a"),
            share(4, 100, "a"),
        ];
        let got = chunks(&rows, 100, 500);
        // 100 + 150 + 100 = 350; row 2 would add 150: 500, fits; row 3 would add 100: 600.
        assert_eq!(got, vec![(vec![0, 1, 2], 500), (vec![3, 4], 350)]);
        for (_, bytes) in &got {
            assert!(*bytes <= 500);
        }
        // Without a bound that binds, one Bundle.
        assert_eq!(chunks(&rows, 100, 10_000), vec![(vec![0, 1, 2, 3, 4], 700)]);
    }

    #[test]
    fn a_row_too_large_for_any_bundle_goes_alone() {
        let rows = [share(0, 100, "a"), share(1, 900, "a"), share(2, 100, "a")];
        assert_eq!(
            chunks(&rows, 100, 500),
            vec![(vec![0], 250), (vec![1], 1050), (vec![2], 250)]
        );
        assert!(chunks(&[], 100, 500).is_empty());
    }

    #[test]
    fn the_next_fetch_asks_for_about_one_bundle_of_rows() {
        let two = [(vec![0, 1, 2], 500), (vec![3, 4], 350)];
        // Several Bundles: the first one's rows fit.
        assert_eq!(fit_after(None, &two, 5, 5, 500, 1000), Some(3));
        // One Bundle from a full fetch, half the bound: about twice the rows fit.
        let one = [(vec![0, 1, 2, 3], 250)];
        assert_eq!(fit_after(Some(4), &one, 4, 4, 500, 1000), Some(8));
        // Never beyond the batch size, never fewer than the rows that fitted.
        assert_eq!(fit_after(Some(4), &one, 4, 4, 500_000, 10), Some(10));
        assert_eq!(
            fit_after(Some(4), &[(vec![0, 1, 2, 3], 499)], 4, 4, 500, 10),
            Some(4)
        );
        // A fetch that found fewer rows than it asked for teaches nothing.
        assert_eq!(fit_after(Some(4), &one, 3, 4, 500, 1000), Some(4));
        assert_eq!(fit_after(None, &[], 0, 4, 500, 1000), None);
    }
}
