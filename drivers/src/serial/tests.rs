//! The serial driver on real pseudo-terminals.

use std::time::Duration;

use super::pty::Pty;
use super::*;
use crate::decode::line::{LineDecoder, LineRegex};
use crate::decode::FieldSpec;
use crate::reading::{Reading, Transport};

const DEADLINE: Duration = Duration::from_secs(10);

fn masimo_framing() -> Arc<Framing> {
    let field = |name: &str, unit: &str| FieldSpec {
        name: name.into(),
        source: name.into(),
        unit: unit.into(),
        scale: None,
        no_reading: vec!["---".into()],
    };
    Arc::new(Framing::Line {
        terminator: "\r\n".into(),
        max_length: 256,
        decoder: LineDecoder {
            regex: LineRegex::new(r"SPO2=(?P<spo2>[-\d]+)%? BPM=(?P<bpm>[-\d]+)")
                .unwrap()
                .0,
            fields: vec![field("spo2", "%"), field("bpm", "/min")],
            timestamp: None,
        },
    })
}

fn port(path: &str, poll: Option<Poll>) -> PortConfig {
    PortConfig {
        path: path.into(),
        identity: Arc::new(DeviceIdentity {
            revisions: Default::default(),
            profile: "masimo".into(),
            transport: Transport::Serial,
            address: path.into(),
            serial_number: None,
            manufacturer: None,
            model: None,
        }),
        link: LinkSettings {
            baud: 9600,
            data_bits: 8,
            parity: Parity::None,
            stop_bits: 1,
            flow_control: FlowControl::None,
        },
        framing: masimo_framing(),
        poll,
        min_interval: None,
        live_clock: false,
    }
}

fn start(
    port: PortConfig,
) -> (
    crate::ReadingReceiver,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let driver = SerialDriver::new(SerialConfig {
        links: Default::default(),
        ports: vec![port],
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
    })
    .unwrap();
    let (tx, rx) = crate::reading_channel(16);
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let cancel = cancel.clone();
        async move {
            Box::new(driver).run(tx, cancel).await.unwrap();
        }
    });
    (rx, cancel, task)
}

async fn next(rx: &mut crate::ReadingReceiver) -> Reading {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a reading before the deadline")
        .expect("the driver is running")
        .reading
}

fn spo2(r: &Reading) -> String {
    r.quantities[0]
        .value
        .value()
        .map(|v| v.to_string())
        .unwrap_or_default()
}

/// Writes `line` repeatedly until a reading of it arrives: the driver discards the
/// partial first line after opening, and the test cannot know when the port was opened.
async fn first_reading(
    pty: &mut Pty,
    rx: &mut crate::ReadingReceiver,
    line: &str,
    spo2_of_line: &str,
) -> Reading {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        pty.write(line.as_bytes()).unwrap();
        match tokio::time::timeout(Duration::from_millis(50), rx.recv()).await {
            Ok(Some(e)) if spo2(&e.reading) == spo2_of_line => return e.reading,
            Ok(Some(_)) => assert!(tokio::time::Instant::now() < deadline, "wrong reading"),
            Ok(None) => panic!("the driver stopped"),
            Err(_) => assert!(tokio::time::Instant::now() < deadline, "no reading"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_to_a_pty_become_readings_and_noise_is_survived() {
    let mut pty = Pty::open().unwrap();
    let path = pty.slave_path().display().to_string();
    let (mut rx, cancel, task) = start(port(&path, None));
    let r = first_reading(&mut pty, &mut rx, "SPO2=097% BPM=072\r\n", "97").await;
    assert_eq!(r.device.address, path);
    // Noise, a line split in three writes, an over-long line, then a valid line.
    pty.write(b"\xff\xfe garbage\r\nSPO2=0").unwrap();
    pty.write(b"95% BP").unwrap();
    pty.write(b"M=070\r\n").unwrap();
    pty.write(&[b'9'; 600]).unwrap();
    pty.write(b"\r\nSPO2=---% BPM=---\r\n").unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let r = next(&mut rx).await;
        if spo2(&r) != "97" {
            seen.push(spo2(&r));
        }
    }
    assert_eq!(seen, ["95", ""]);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_disappears_and_comes_back_is_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-Masimo-if00");
    let mut pty = Pty::open().unwrap();
    std::os::unix::fs::symlink(pty.slave_path(), &link).unwrap();
    let (mut rx, cancel, task) = start(port(&link.display().to_string(), None));
    first_reading(&mut pty, &mut rx, "SPO2=097% BPM=072\r\n", "97").await;

    // Unplug: the device node vanishes.
    drop(pty);
    std::fs::remove_file(&link).unwrap();

    // Replug: a new node under the same stable name.
    let mut pty = Pty::open().unwrap();
    std::os::unix::fs::symlink(pty.slave_path(), &link).unwrap();
    let r = first_reading(&mut pty, &mut rx, "SPO2=091% BPM=088\r\n", "91").await;
    assert_eq!(spo2(&r), "91");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polled_device_receives_its_request_and_its_answer_is_read() {
    let mut pty = Pty::open().unwrap();
    let path = pty.slave_path().display().to_string();
    let poll = Poll {
        request: b"G1\r\n".to_vec(),
        interval: Duration::from_millis(50),
    };
    let (mut rx, cancel, task) = start(port(&path, Some(poll)));
    let mut master = pty.try_clone_master().unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 4];
        std::io::Read::read_exact(&mut master, &mut buf).map(|_| buf)
    });
    let request = tokio::time::timeout(DEADLINE, got)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&request, b"G1\r\n");
    let r = first_reading(&mut pty, &mut rx, "SPO2=099% BPM=061\r\n", "99").await;
    assert_eq!(spo2(&r), "99");
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

/// A port whose lines carry the device's clock, `12/07/26 06:50:00 SPO2=097% BPM=072`.
fn live_port(path: &str) -> PortConfig {
    let field = |name: &str, unit: &str| FieldSpec {
        name: name.into(),
        source: name.into(),
        unit: unit.into(),
        scale: None,
        no_reading: vec!["---".into()],
    };
    PortConfig {
        framing: Arc::new(Framing::Line {
            terminator: "\r\n".into(),
            max_length: 256,
            decoder: LineDecoder {
                regex: LineRegex::new(
                    r"^(?P<date>\S+) (?P<time>\S+) SPO2=(?P<spo2>[-\d]+)%? BPM=(?P<bpm>[-\d]+)",
                )
                .unwrap()
                .0,
                fields: vec![field("spo2", "%"), field("bpm", "/min")],
                timestamp: Some(crate::decode::line::LineTimestamp {
                    captures: vec!["date".into(), "time".into()],
                    format: "%m/%d/%y %H:%M:%S".into(),
                }),
            },
        }),
        live_clock: true,
        ..port(path, None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_clock_is_compared_once_per_session_and_again_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("usb-Masimo-if00");
    let mut pty = Pty::open().unwrap();
    std::os::unix::fs::symlink(pty.slave_path(), &link).unwrap();
    let (mut rx, cancel, task) = start(live_port(&link.display().to_string()));
    let first = first_reading(
        &mut pty,
        &mut rx,
        "12/07/26 06:50:00 SPO2=097% BPM=072\r\n",
        "97",
    )
    .await;
    let compared = first
        .clock
        .expect("the session's first line compares the clock");
    assert_eq!(Some(compared.device_now), first.device_time);
    assert_eq!(compared.gateway_now, first.received_at);
    pty.write(b"12/07/26 06:50:01 SPO2=096% BPM=072\r\n")
        .unwrap();
    let second = loop {
        let r = next(&mut rx).await;
        if spo2(&r) == "96" {
            break r;
        }
    };
    assert_eq!(second.clock, Some(compared), "one comparison per session");

    // Unplugged and plugged back: a new session, a new comparison.
    drop(pty);
    std::fs::remove_file(&link).unwrap();
    let mut pty = Pty::open().unwrap();
    std::os::unix::fs::symlink(pty.slave_path(), &link).unwrap();
    let after = first_reading(
        &mut pty,
        &mut rx,
        "12/07/26 06:55:00 SPO2=091% BPM=072\r\n",
        "91",
    )
    .await;
    let again = after.clock.expect("the reopened port compares again");
    assert_ne!(again, compared);
    assert_eq!(again.gateway_now, after.received_at);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_without_live_clock_compares_nothing() {
    let mut pty = Pty::open().unwrap();
    let path = pty.slave_path().display().to_string();
    let (mut rx, cancel, task) = start(PortConfig {
        live_clock: false,
        ..live_port(&path)
    });
    let r = first_reading(
        &mut pty,
        &mut rx,
        "12/07/26 06:50:00 SPO2=097% BPM=072\r\n",
        "97",
    )
    .await;
    assert!(r.device_time.is_some());
    assert_eq!(r.clock, None);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, task).await.unwrap().unwrap();
}

#[test]
fn a_port_configured_twice_is_refused() {
    let err = SerialDriver::new(SerialConfig {
        links: Default::default(),
        ports: vec![port("/dev/ttyUSB0", None), port("/dev/ttyUSB0", None)],
        reconnect_initial: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
    })
    .unwrap_err();
    assert!(err.to_string().contains("configured twice"), "{err}");
}
