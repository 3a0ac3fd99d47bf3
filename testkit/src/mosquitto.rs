//! A real mosquitto broker on a free 127.0.0.1 port, started and stopped by the test, and
//! the MQTT clients the tests and benchmarks use: a QoS 1 publisher that returns once the
//! broker has acknowledged every message, and a collector that subscribes with a
//! persistent session and keeps what arrives.
//!
//! The broker is killed when its [`Mosquitto`] is dropped, so a failing test leaves no
//! broker behind.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::task::JoinHandle;

/// Where Debian installs the broker.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A mosquitto process with its own configuration and persistence directory.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound and released; the broker binds it next).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Mosquitto {
    /// Starts a broker listening on a free 127.0.0.1 port, anonymous, with persistence in
    /// `dir` (created if missing); `extra` lines are appended to its configuration.
    /// Returns once the broker accepts connections.
    pub fn start(dir: &Path, extra: &str) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let conf = dir.join("mosquitto.conf");
        // Started as root, mosquitto would switch to the `mosquitto` user, which cannot
        // read the test's directory (persistence, log, certificates): it stays who it is.
        let user = if nix::unistd::geteuid().is_root() {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                "{user}listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nlog_dest file {}/mosquitto.log\nlog_type error\nlog_type warning\n{extra}\n",
                dir.display(),
                dir.display()
            ),
        )?;
        let mut broker = Self {
            child: None,
            port,
            dir: dir.to_path_buf(),
        };
        broker.launch()?;
        Ok(broker)
    }

    fn launch(&mut self) -> io::Result<()> {
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                self.dir.join("mosquitto.stderr"),
            )?))
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {MOSQUITTO}: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                let stderr =
                    std::fs::read_to_string(self.dir.join("mosquitto.stderr")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "mosquitto exited with {status}: {stderr}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("mosquitto did not start listening"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the broker gracefully (SIGTERM: it saves its persistence file) and waits.
    pub fn stop(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .map_err(io::Error::other)?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the stopped broker again on the same port with the same persistence.
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop()?;
        self.launch()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Publishes `messages` (topic, payload) at QoS 1 on the broker at `port` and returns once
/// the broker has acknowledged every one (or with an error after `timeout`).
pub async fn publish_acked(
    port: u16,
    client_id: &str,
    messages: Vec<(String, Vec<u8>)>,
    timeout: Duration,
) -> io::Result<()> {
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_max_packet_size(16 << 20, 16 << 20).set_inflight(100);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let total = messages.len();
    let sender = tokio::spawn({
        let client = client.clone();
        async move {
            for (topic, payload) in messages {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    let work = async {
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => return Err(io::Error::other(format!("publisher: {e}"))),
            }
        }
        let _ = client.disconnect().await;
        // Flush the DISCONNECT.
        while let Ok(ev) = eventloop.poll().await {
            if matches!(ev, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
        Ok(())
    };
    let result = tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| io::Error::other("publisher: timed out waiting for PUBACKs"))?;
    sender.abort();
    result
}

/// Messages as received: (topic, payload).
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A subscriber with a persistent session that keeps every message it receives.
pub struct Collector {
    received: Received,
    task: JoinHandle<()>,
}

impl Collector {
    /// Subscribes to `filter` at QoS 1 with client id `client_id` and a persistent
    /// session, reconnecting whenever the broker goes away.
    pub async fn start(port: u16, client_id: &str, filter: &str) -> Self {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false)
            .set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = received.clone();
        let filter = filter.to_string();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(mut r) = keep.lock() {
                            r.push((p.topic.clone(), p.payload.to_vec()));
                        }
                    }
                    Ok(_) => {}
                    // The broker is away (restarting): reconnect after a short pause.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(20), ready_rx).await;
        Self { received, task }
    }

    /// A copy of what arrived so far: (topic, payload), in arrival order.
    pub fn received(&self) -> Vec<(String, Vec<u8>)> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
