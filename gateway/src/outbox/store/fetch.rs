//! Reading a batch of rows for an uplink, with the Device resources they reference.

use std::collections::HashSet;

use rusqlite::{params, OptionalExtension};

use super::{
    read_row, sealed_from, sql, DamagedRow, FetchedDevice, FetchedRows, Store, StoredDevice,
    StoredRow,
};
use crate::outbox::seal::Sealing;
use crate::outbox::OutboxError;

impl Store {
    /// Up to `limit` rows waiting for `uplink` with `seq > after`, oldest first, with the
    /// Device resources they reference; rows in `skip` (delivered, their deletion still
    /// waiting) are passed over. A row whose columns cannot be read as written (a device
    /// id that is not UTF-8 text, a key id that is not an integer...) does not fail the
    /// fetch: it comes back in the second list, to be dead-lettered, so one damaged row
    /// never stalls the others.
    pub fn fetch(
        &mut self,
        uplink: &str,
        after: i64,
        limit: usize,
        skip: Option<&HashSet<i64>>,
    ) -> Result<FetchedRows, OutboxError> {
        let bit = self.bit(uplink)?;
        let p = self.path.clone();
        let skipped = skip.map_or(0, HashSet::len);
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, created_ms, device_id, key_id, nonce, sealed, LENGTH(sealed) FROM rows WHERE seq > ?1 AND (pending & ?2) != 0 ORDER BY seq LIMIT ?3")
            .map_err(sql(&p))?;
        // Rows delivered but not yet deleted are passed over on their sequence number
        // alone, before any other column (the ciphertext above all) is read.
        let read: Vec<Result<StoredRow, DamagedRow>> = stmt
            .query_map(
                params![
                    after,
                    bit,
                    i64::try_from(limit.saturating_add(skipped)).unwrap_or(i64::MAX)
                ],
                |r| {
                    let seq: i64 = r.get(0)?;
                    if skip.is_some_and(|s| s.contains(&seq)) {
                        return Ok(None);
                    }
                    read_row(r).map(Some)
                },
            )
            .map_err(sql(&p))?
            .filter_map(Result::transpose)
            .take(limit)
            .collect::<Result<_, _>>()
            .map_err(sql(&p))?;
        let (mut rows, mut damaged) = (Vec::with_capacity(read.len()), Vec::new());
        for r in read {
            match r {
                Ok(row) => rows.push(row),
                Err(d) => damaged.push(d),
            }
        }
        drop(stmt);
        let ids: HashSet<&str> = rows.iter().map(|r| r.device_id.as_str()).collect();
        let mut devices = Vec::with_capacity(ids.len());
        let mut stmt = self
            .conn
            .prepare_cached("SELECT key_id, nonce, sealed FROM devices WHERE id = ?1")
            .map_err(sql(&p))?;
        for id in ids {
            let known = self.known_devices.sealing(id);
            if let Some(json) = known.and_then(|s| self.opened.as_ref()?.get(id, &s)) {
                devices.push(FetchedDevice::Opened(id.to_string(), json));
                continue;
            }
            if let Some(sealed) = stmt
                .query_row([id], |r| Ok(sealed_from(r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()
                .map_err(sql(&p))?
            {
                self.known_devices.read_back(id, Sealing::of(&sealed));
                devices.push(FetchedDevice::Sealed(StoredDevice {
                    id: id.to_string(),
                    sealed,
                }));
            }
        }
        Ok((rows, damaged, devices))
    }
}
