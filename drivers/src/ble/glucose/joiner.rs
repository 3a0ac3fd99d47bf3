//! [`GlucoseJoiner`]: joins each Glucose Measurement to the context that follows it, by
//! sequence number.

use super::{GlucoseContext, GlucoseMeasurement};

use std::collections::VecDeque;

/// A glucose record: the measurement with its context, when one arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlucoseRecord {
    /// The measurement.
    pub measurement: GlucoseMeasurement,
    /// Its context.
    pub context: Option<GlucoseContext>,
}

/// A context whose measurement is not waiting (never announced, or already given up on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Glucose Measurement Context (0x2A34) for sequence number {sequence} has no waiting measurement")]
pub struct OrphanContext {
    /// The context's sequence number.
    pub sequence: u16,
}

/// Joins Glucose Measurements to the contexts that follow them, by sequence number.
///
/// Pure and bounded: at most `capacity` measurements wait for their context. When a
/// measurement announcing a context arrives and the joiner is full, the oldest waiting one
/// is released without context. The driver calls [`GlucoseJoiner::flush`] when the record
/// transfer ends (the Record Access Control Point's response) or its context timeout
/// passes, so a context that never comes cannot hold a record back.
#[derive(Debug, Clone)]
pub struct GlucoseJoiner {
    waiting: VecDeque<GlucoseMeasurement>,
    capacity: usize,
}

impl GlucoseJoiner {
    /// A joiner holding at most `capacity` (at least 1) measurements.
    pub fn new(capacity: usize) -> Self {
        Self {
            waiting: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Takes a measurement; returns the records complete now (the measurement itself when
    /// no context follows, and any waiting one evicted to stay within capacity).
    pub fn measurement(&mut self, m: GlucoseMeasurement) -> Vec<GlucoseRecord> {
        let mut done = Vec::new();
        if !m.context_follows {
            done.push(GlucoseRecord {
                measurement: m,
                context: None,
            });
            return done;
        }
        // A repeated sequence number replaces the earlier one, which is released as is.
        if let Some(pos) = self.waiting.iter().position(|w| w.sequence == m.sequence) {
            if let Some(old) = self.waiting.remove(pos) {
                done.push(GlucoseRecord {
                    measurement: old,
                    context: None,
                });
            }
        }
        while self.waiting.len() >= self.capacity {
            match self.waiting.pop_front() {
                Some(old) => done.push(GlucoseRecord {
                    measurement: old,
                    context: None,
                }),
                None => break,
            }
        }
        self.waiting.push_back(m);
        done
    }

    /// Takes a context; returns the joined record, or an error if no measurement with its
    /// sequence number is waiting.
    pub fn context(&mut self, c: GlucoseContext) -> Result<GlucoseRecord, OrphanContext> {
        let pos = self
            .waiting
            .iter()
            .position(|w| w.sequence == c.sequence)
            .ok_or(OrphanContext {
                sequence: c.sequence,
            })?;
        let measurement = self.waiting.remove(pos).ok_or(OrphanContext {
            sequence: c.sequence,
        })?;
        Ok(GlucoseRecord {
            measurement,
            context: Some(c),
        })
    }

    /// Releases every waiting measurement without context, oldest first.
    pub fn flush(&mut self) -> Vec<GlucoseRecord> {
        self.waiting
            .drain(..)
            .map(|measurement| GlucoseRecord {
                measurement,
                context: None,
            })
            .collect()
    }

    /// How many measurements wait for their context.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}
