//! The serial driver: USB-serial and RS-232 medical devices through `tokio-serial`.
//!
//! One task per configured port. Each opens its port by path (a stable
//! `/dev/serial/by-id/...` name is best: USB adapters get a new `ttyUSBn` after a replug),
//! with the profile's baud rate, data bits, parity, stop bits and flow control; feeds every
//! read into a [`StreamDecoder`] (lines or binary frames, declared in the profile); and
//! sends each reading on the bounded channel (waiting when it is full).
//!
//! **Unplug and replug.** A read error or end of file means the port went away: the task
//! logs it (warn, with the port path), closes the port, and tries to reopen it with capped
//! exponential [`Backoff`]; the first failure of a row is a warning, later ones are debug,
//! and reopening is an info line. A port that delivers data resets the backoff.
//!
//! **Device clocks.** On a port marked `live_clock` (a device that sends each line as it
//! measures, stamped by its clock), the first time stamp of each session against its
//! receive time is the device clock's comparison with the gateway's, carried by the
//! session's readings ([`clock`]).
//!
//! **Polling.** Devices that answer only when asked get the profile's request bytes
//! written at its interval while the port is open.
//!
//! **Logs.** Rejected lines and frames are counted and logged at debug with their raw
//! bytes in hex; measured values and serial numbers are never logged at info or above.
//!
//! The task stops when its cancellation token fires or the channel's receiver is gone.

pub mod clock;
pub mod pty;
pub mod sim;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio_serial::SerialPortBuilderExt;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::decode::stream::{Framing, StreamDecoder};
use crate::driver::{Driver, DriverError, DriverFuture, ReadingSender};
use crate::link::LinkEvent;
use crate::reading::DeviceIdentity;

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Odd parity.
    Odd,
    /// Even parity.
    Even,
}

/// Serial flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowControl {
    /// None.
    None,
    /// XON/XOFF.
    Software,
    /// RTS/CTS.
    Hardware,
}

/// Line settings of a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5 to 8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
    /// Flow control.
    pub flow_control: FlowControl,
}

/// Bytes written to a device at an interval, for devices that answer only when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poll {
    /// The request.
    pub request: Vec<u8>,
    /// The interval between requests (the first is sent right after opening).
    pub interval: Duration,
}

/// One port to read.
#[derive(Debug, Clone)]
pub struct PortConfig {
    /// The device path (`/dev/ttyUSB0`, `/dev/serial/by-id/...`).
    pub path: String,
    /// The identity readings carry (profile id, transport serial, address = `path`).
    pub identity: Arc<DeviceIdentity>,
    /// Line settings.
    pub link: LinkSettings,
    /// Framing and decoding.
    pub framing: Arc<Framing>,
    /// Polling, if the device needs it.
    pub poll: Option<Poll>,
    /// Forward at most one reading per interval (streaming oximeters send dozens a
    /// second); readings in between are dropped and counted. `None`: forward all.
    pub min_interval: Option<Duration>,
    /// The device sends each line or frame as it measures, stamped by its own clock: the
    /// time stamp against the receive time compares the device's clock with the
    /// gateway's ([`clock`]). `false`: time stamps are taken as they are.
    pub live_clock: bool,
}

/// The serial driver's configuration.
#[derive(Debug, Clone)]
pub struct SerialConfig {
    /// The ports.
    pub ports: Vec<PortConfig>,
    /// First delay before reopening a port that failed.
    pub reconnect_initial: Duration,
    /// Longest delay between two attempts.
    pub reconnect_max: Duration,
    /// Where each port's opening and loss are reported (the gateway's health view).
    pub links: crate::link::LinkReporter,
}

/// The serial driver.
#[derive(Debug)]
pub struct SerialDriver {
    config: SerialConfig,
}

impl SerialDriver {
    /// Checks the configuration: at least one port, no path twice.
    pub fn new(config: SerialConfig) -> Result<Self, DriverError> {
        let fail = |reason: String| DriverError::Config {
            driver: "serial".into(),
            reason,
        };
        if config.ports.is_empty() {
            return Err(fail("no port configured".into()));
        }
        for (i, p) in config.ports.iter().enumerate() {
            if config.ports[..i].iter().any(|q| q.path == p.path) {
                return Err(fail(format!("port `{}` is configured twice", p.path)));
            }
        }
        Ok(Self { config })
    }
}

impl Driver for SerialDriver {
    fn name(&self) -> &str {
        "serial"
    }

    fn run(self: Box<Self>, tx: ReadingSender, cancel: CancellationToken) -> DriverFuture {
        Box::pin(async move {
            let mut tasks = JoinSet::new();
            let links = self.config.links.clone();
            for port in self.config.ports {
                let backoff =
                    Backoff::new(self.config.reconnect_initial, self.config.reconnect_max);
                tasks.spawn(run_port(
                    port,
                    backoff,
                    tx.clone(),
                    cancel.clone(),
                    links.clone(),
                ));
            }
            drop(tx);
            while let Some(done) = tasks.join_next().await {
                if let Err(e) = done {
                    tracing::error!(error = %e, "serial port task panicked");
                }
            }
            Ok(())
        })
    }
}

/// Why a session on an open port ended.
enum SessionEnd {
    Cancelled,
    ReceiverGone,
    Lost(String),
}

fn open(port: &PortConfig) -> Result<tokio_serial::SerialStream, tokio_serial::Error> {
    let l = &port.link;
    let data_bits = match l.data_bits {
        5 => tokio_serial::DataBits::Five,
        6 => tokio_serial::DataBits::Six,
        7 => tokio_serial::DataBits::Seven,
        _ => tokio_serial::DataBits::Eight,
    };
    tokio_serial::new(&port.path, l.baud)
        .data_bits(data_bits)
        .parity(match l.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Odd => tokio_serial::Parity::Odd,
            Parity::Even => tokio_serial::Parity::Even,
        })
        .stop_bits(if l.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        })
        .flow_control(match l.flow_control {
            FlowControl::None => tokio_serial::FlowControl::None,
            FlowControl::Software => tokio_serial::FlowControl::Software,
            FlowControl::Hardware => tokio_serial::FlowControl::Hardware,
        })
        .open_native_async()
}

/// Opens, reads, and reopens one port until cancelled.
async fn run_port(
    port: PortConfig,
    mut backoff: Backoff,
    tx: ReadingSender,
    cancel: CancellationToken,
    links: crate::link::LinkReporter,
) {
    let mut decoder = StreamDecoder::new(port.framing.clone());
    let mut thinned = 0u64;
    loop {
        if cancel.is_cancelled() {
            break;
        }
        match open(&port) {
            Ok(stream) => {
                tracing::info!(port = %port.path, profile = %port.identity.profile, "serial port opened");
                links.report(&port.identity, LinkEvent::Connected);
                decoder.reset();
                match session(
                    &port,
                    stream,
                    &mut decoder,
                    &mut backoff,
                    &tx,
                    &cancel,
                    &mut thinned,
                )
                .await
                {
                    SessionEnd::Cancelled | SessionEnd::ReceiverGone => break,
                    SessionEnd::Lost(error) => {
                        links.report(&port.identity, LinkEvent::Disconnected);
                        let delay = backoff.fail();
                        tracing::warn!(
                            port = %port.path,
                            error = %error,
                            retry_in_ms = delay.as_millis() as u64,
                            "serial port lost (device unplugged or switched off?); reopening"
                        );
                        tokio::select! {
                            _ = cancel.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
            Err(e) => {
                // The first failure of a row is worth a warning; a port that was just lost
                // has already been reported.
                let first = backoff.failures() == 0;
                let delay = backoff.fail();
                if first {
                    links.report(&port.identity, LinkEvent::Failed);
                    tracing::warn!(
                        port = %port.path,
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        "cannot open serial port (is the device plugged in and the path right?); retrying with backoff"
                    );
                } else {
                    tracing::debug!(port = %port.path, error = %e, retry_in_ms = delay.as_millis() as u64, failures = backoff.failures(), "serial port still unavailable");
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    let stats = decoder.stats();
    tracing::info!(
        port = %port.path,
        readings = stats.readings,
        rejected = stats.rejected,
        skipped_bytes = stats.skipped_bytes,
        incomplete_packets = stats.incomplete_packets,
        thinned,
        "serial port closed"
    );
}

/// Reads an open port until it fails, the token fires or the receiver is gone.
async fn session(
    port: &PortConfig,
    mut stream: tokio_serial::SerialStream,
    decoder: &mut StreamDecoder,
    backoff: &mut Backoff,
    tx: &ReadingSender,
    cancel: &CancellationToken,
    thinned: &mut u64,
) -> SessionEnd {
    let mut buf = [0u8; 1024];
    // A new session, a new comparison of the device's clock.
    let mut clock = port.live_clock.then(clock::LiveClock::default);
    let mut last_sent: Option<tokio::time::Instant> = None;
    let mut poll = port.poll.as_ref().map(|p| {
        let mut i = tokio::time::interval(p.interval);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (i, p.request.as_slice())
    });
    loop {
        let polled = async {
            match poll.as_mut() {
                Some((interval, request)) => {
                    interval.tick().await;
                    Some(*request)
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return SessionEnd::Cancelled,
            request = polled => {
                if let Some(request) = request {
                    if let Err(e) = stream.write_all(request).await {
                        return SessionEnd::Lost(format!("writing the poll request failed: {e}"));
                    }
                    tracing::trace!(port = %port.path, "poll request sent");
                }
            }
            read = stream.read(&mut buf) => {
                let n = match read {
                    Ok(0) => return SessionEnd::Lost("end of file".into()),
                    Ok(n) => n,
                    Err(e) => return SessionEnd::Lost(e.to_string()),
                };
                backoff.succeed();
                for item in decoder.feed(&buf[..n], &port.identity, Utc::now()) {
                    match item {
                        Ok(mut reading) => {
                            if let Some(clock) = clock.as_mut() {
                                if clock.stamp(&mut reading) {
                                    tracing::debug!(port = %port.path, "device clock compared with the receive time");
                                }
                            }
                            let now = tokio::time::Instant::now();
                            if let (Some(min), Some(last)) = (port.min_interval, last_sent) {
                                if now.duration_since(last) < min {
                                    *thinned += 1;
                                    continue;
                                }
                            }
                            last_sent = Some(now);
                            if tx.send(reading).await.is_err() {
                                return SessionEnd::ReceiverGone;
                            }
                        }
                        Err(problem) => {
                            tracing::debug!(
                                port = %port.path,
                                raw = %hex::encode(problem.raw()),
                                "{}",
                                problem.describe()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
