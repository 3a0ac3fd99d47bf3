//! Pseudo-terminals: a real serial line without hardware, for the simulator, the demo
//! and the tests. The gateway opens the slave side (`/dev/pts/N`) exactly as it would
//! open `/dev/ttyUSB0`; whatever is written to the master side arrives there.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::pty::openpty;
use nix::sys::termios::{self, SetArg};

/// A pseudo-terminal pair. Dropping it closes both sides, which the reader sees as the
/// device being unplugged.
#[derive(Debug)]
pub struct Pty {
    master: File,
    /// Kept open so the slave does not hang up between two opens by the gateway.
    _slave: OwnedFd,
    slave_path: PathBuf,
}

impl Pty {
    /// Opens a pair with the slave in raw mode (no echo, no CR/LF translation), so bytes
    /// pass unchanged even before the gateway opens and configures the slave.
    pub fn open() -> io::Result<Self> {
        let pair = openpty(None, None).map_err(io::Error::from)?;
        // Not inherited by child processes (a gateway started by a test): a child holding
        // the master open would keep the line up after the pty is dropped.
        for fd in [&pair.master, &pair.slave] {
            fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
        }
        let mut t = termios::tcgetattr(&pair.slave).map_err(io::Error::from)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&pair.slave, SetArg::TCSANOW, &t).map_err(io::Error::from)?;
        let slave_path = nix::unistd::ttyname(&pair.slave).map_err(io::Error::from)?;
        Ok(Self {
            master: File::from(pair.master),
            _slave: pair.slave,
            slave_path,
        })
    }

    /// The path the gateway opens (`/dev/pts/N`).
    pub fn slave_path(&self) -> &PathBuf {
        &self.slave_path
    }

    /// Writes bytes as the device would send them.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.master.write_all(bytes)?;
        self.master.flush()
    }

    /// Reads what the gateway sent (poll requests); blocks until something arrives.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.master.read(buf)
    }

    /// A second handle on the master side (e.g. a reader thread next to a writer).
    pub fn try_clone_master(&self) -> io::Result<File> {
        self.master.try_clone()
    }
}
