//! The kernel watchdog: the fence for an agent that cannot fence itself.
//!
//! An agent that is killed, deadlocked or starved while it holds a lease
//! never runs its `fence` hooks, and its site would keep serving after the
//! leader's lease wait. The Linux watchdog closes that hole: once the
//! device (`/dev/watchdog`, e.g. softdog or a hardware timer) is opened it
//! must be written to ("petted") at least every `timeout`, or the machine
//! reboots. So the agent:
//!
//! - **arms** it ([`Watchdog::arm`]: open, `WDIOC_SETTIMEOUT`, first pet)
//!   when it first holds a lease — not at start: a standby site's agents
//!   hold no lease, and arming there would reboot them in a loop;
//! - **pets** it ([`Watchdog::pet`]) only while its lease is valid, from
//!   the loop that checks the lease on BOOTTIME. When the lease is gone and
//!   the agent is alive it fences itself and then disarms; when the agent
//!   is dead or stuck, nobody pets and the machine reboots within
//!   `timeout`. Hence `watchdog.timeout ≤ lease.margin` (DESIGN.md §3.8):
//!   the last pet happens before the lease ends, so the reboot comes
//!   before the leader's wait (lease + margin) is over;
//! - **disarms** it ([`Watchdog::disarm`]) on a clean stop, after fencing
//!   or deactivating, with the "magic close": the byte `V` written right
//!   before closing tells the driver the close is deliberate. A close
//!   without it (a crash, or simply dropping a [`Watchdog`] that is armed)
//!   leaves the timer running and the machine reboots. A driver loaded
//!   with `nowayout=1` ignores the magic close: do not use that with an
//!   agent that may disarm (the standby side would reboot).
//!
//! Modes ([`WatchdogMode`]): `required` refuses to start when the device
//! is missing (production), `auto` uses it when present and logs an error
//! when not (labs, containers), `off` never touches it (tests; then only
//! the fence hooks and the outside fences remain).
//!
//! `WDIOC_SETTIMEOUT` asks the driver for `timeout`; the driver may round
//! it and the value it reports back is the one [`Watchdog::timeout`]
//! returns (the agent reports it when it renews, and the leader checks it
//! against `margin`). A device that does not support the ioctl (`ENOTTY`:
//! a plain file or a FIFO standing in for the device in tests) is used
//! with the configured value.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::config::{WatchdogMode, WatchdogSection};

/// What a pet writes: any byte but `V` keeps the timer alive.
pub const PET: &[u8] = b"\n";
/// The magic close byte.
pub const MAGIC_CLOSE: &[u8] = b"V";

/// `_IOWR('W', 6, int)` from `<linux/watchdog.h>`.
const WDIOC_SETTIMEOUT: u32 = 0xC004_5706;

/// Why the watchdog could not be used. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    #[error(
        "watchdog.mode = \"required\" but {} does not exist; load a watchdog driver \
         (`modprobe softdog`, or enable the hardware watchdog in the BIOS/hypervisor), or point \
         watchdog.device at the right device; only in a lab set watchdog.mode = \"auto\" or \"off\"",
        .device.display()
    )]
    Missing { device: PathBuf },
    #[error(
        "{} is not a watchdog device ({what}); set watchdog.device to the watchdog's path, \
         usually /dev/watchdog",
        .device.display()
    )]
    NotADevice { device: PathBuf, what: String },
    #[error("cannot open watchdog {}: {source}; {hint}", .device.display())]
    Open {
        device: PathBuf,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot set the timeout of watchdog {} to {secs}s: {source}; pick a timeout the driver \
         supports (see `wdctl`)",
        .device.display()
    )]
    SetTimeout {
        device: PathBuf,
        secs: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot pet watchdog {}: {source}; the machine will reboot within the watchdog timeout \
         unless the agent fences and stops cleanly",
        .device.display()
    )]
    Pet {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "magic close of watchdog {} failed: {source}; the timer keeps running and the machine \
         will reboot",
        .device.display()
    )]
    Close {
        device: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A watchdog device, armed or not.
#[derive(Debug)]
pub struct Watchdog {
    device: PathBuf,
    /// The configured timeout, until the driver reports its own.
    timeout: Duration,
    file: Option<File>,
}

impl Watchdog {
    /// The watchdog this configuration asks for: `None` with mode `off`, or
    /// with mode `auto` when the device is missing (logged as an error);
    /// an error with mode `required` when it is missing. Does not arm it.
    pub fn from_config(section: &WatchdogSection) -> Result<Option<Watchdog>, WatchdogError> {
        if section.mode == WatchdogMode::Off {
            tracing::info!("watchdog off: a dead agent is fenced only by outside means");
            return Ok(None);
        }
        let device = &section.device;
        let present = match std::fs::metadata(device) {
            Ok(meta) if meta.is_dir() => {
                return Err(WatchdogError::NotADevice {
                    device: device.clone(),
                    what: "a directory".into(),
                });
            }
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(source) => {
                return Err(WatchdogError::Open {
                    device: device.clone(),
                    hint: "check the path and its permissions",
                    source,
                });
            }
        };
        match (present, section.mode) {
            (true, _) => Ok(Some(Watchdog {
                device: device.clone(),
                timeout: section.timeout,
                file: None,
            })),
            (false, WatchdogMode::Required) => Err(WatchdogError::Missing {
                device: device.clone(),
            }),
            (false, _) => {
                tracing::error!(
                    device = %device.display(),
                    "NO WATCHDOG: {} does not exist and watchdog.mode = \"auto\"; if this agent \
                     dies while holding a lease, nothing stops its site from serving after the \
                     lease ends. Load a watchdog driver (`modprobe softdog`) and set \
                     watchdog.mode = \"required\" in production",
                    device.display()
                );
                Ok(None)
            }
        }
    }

    /// The device path.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// The timeout in force: the driver's answer once armed, the
    /// configured value before (or when the device cannot report one).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the device is open, i.e. the timer is running.
    pub fn is_armed(&self) -> bool {
        self.file.is_some()
    }

    /// Open the device (which starts the timer), set its timeout and pet
    /// it once. Returns the timeout in force. Arming an armed watchdog
    /// only pets it.
    pub fn arm(&mut self) -> Result<Duration, WatchdogError> {
        if self.file.is_some() {
            self.pet()?;
            return Ok(self.timeout);
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.device)
            .map_err(|source| WatchdogError::Open {
                device: self.device.clone(),
                hint: open_hint(&source),
                source,
            })?;
        // Hold the file from here: if anything below fails, dropping it
        // closes without the magic byte, and the timer keeps running.
        self.file = Some(file);
        self.set_timeout()?;
        self.pet()?;
        tracing::info!(
            device = %self.device.display(),
            "watchdog armed, timeout {:?}",
            self.timeout
        );
        Ok(self.timeout)
    }

    /// Keep the machine alive for another `timeout`. Call only while the
    /// lease is valid. Arms the watchdog if it is not armed yet.
    pub fn pet(&mut self) -> Result<(), WatchdogError> {
        let Some(file) = self.file.as_mut() else {
            return self.arm().map(|_| ());
        };
        file.write_all(PET).map_err(|source| WatchdogError::Pet {
            device: self.device.clone(),
            source,
        })
    }

    /// Stop the timer with the magic close. A no-op when not armed.
    pub fn disarm(&mut self) -> Result<(), WatchdogError> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        file.write_all(MAGIC_CLOSE)
            .and_then(|()| file.flush())
            .map_err(|source| WatchdogError::Close {
                device: self.device.clone(),
                source,
            })?;
        drop(file);
        tracing::info!(device = %self.device.display(), "watchdog disarmed (magic close)");
        Ok(())
    }

    fn set_timeout(&mut self) -> Result<(), WatchdogError> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        // Validation keeps the timeout in whole seconds between 1 s and a
        // minute; clamp anyway rather than trust it blindly.
        let secs = u32::try_from(self.timeout.as_secs())
            .unwrap_or(u32::MAX)
            .max(1);
        let mut value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
        // SAFETY: WDIOC_SETTIMEOUT reads and writes back one c_int through
        // the pointer, which points to a live local of that type; the fd
        // is open for as long as `file` lives.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::ioctl(
                file.as_raw_fd(),
                WDIOC_SETTIMEOUT as _,
                &mut value as *mut libc::c_int,
            )
        };
        if rc == 0 {
            let granted = u64::try_from(value).unwrap_or(0);
            if granted > 0 {
                if granted != u64::from(secs) {
                    tracing::warn!(
                        device = %self.device.display(),
                        "asked for a {secs}s watchdog timeout, the driver set {granted}s"
                    );
                }
                self.timeout = Duration::from_secs(granted);
            }
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOTTY) {
            // Not a watchdog driver (a file or FIFO in tests), or one without
            // a settable timeout: its own timeout applies.
            tracing::warn!(
                device = %self.device.display(),
                "the device does not support setting a timeout; assuming {:?}",
                self.timeout
            );
            return Ok(());
        }
        Err(WatchdogError::SetTimeout {
            device: self.device.clone(),
            secs,
            source: err,
        })
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Deliberately no magic close: an armed watchdog dropped without
            // `disarm` means the agent is going away without having stopped
            // cleanly, which is exactly when the machine must reboot.
            tracing::error!(
                device = %self.device.display(),
                "closing the armed watchdog without the magic close: the machine will reboot \
                 within {:?}",
                self.timeout
            );
        }
    }
}

fn open_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EBUSY) => {
            "another process holds the watchdog (systemd's RuntimeWatchdogSec=, watchdogd, \
             wdmd): give it to the agent, or set watchdog.mode = \"off\" and rely on that one"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "the agent must run as root (or be given write access to the device)"
        }
        _ => "check the device and its driver (`wdctl` shows it)",
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn section(mode: WatchdogMode, device: &Path) -> WatchdogSection {
        WatchdogSection {
            mode,
            device: device.to_path_buf(),
            timeout: Duration::from_secs(1),
        }
    }

    /// A fake device (a regular file) receives one write per pet and `V`
    /// last on a clean stop.
    #[test]
    fn pets_then_magic_close_on_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").expect("create fake device");
        let mut dog = Watchdog::from_config(&section(WatchdogMode::Required, &device))
            .expect("present")
            .expect("some");
        assert!(!dog.is_armed(), "not armed before a lease");
        assert_eq!(std::fs::read(&device).expect("read"), b"");
        // A plain file answers the ioctl with ENOTTY: the configured timeout stays.
        assert_eq!(dog.arm().expect("arm"), Duration::from_secs(1));
        assert!(dog.is_armed());
        dog.pet().expect("pet");
        dog.pet().expect("pet");
        assert_eq!(std::fs::read(&device).expect("read"), b"\n\n\n");
        dog.disarm().expect("disarm");
        assert!(!dog.is_armed());
        assert_eq!(std::fs::read(&device).expect("read"), b"\n\n\nV");
        // Disarming twice is harmless.
        dog.disarm().expect("disarm again");
    }

    /// Dropping an armed watchdog does NOT write the magic byte: an agent
    /// that goes away uncleanly lets the machine reboot.
    #[test]
    fn drop_without_disarm_leaves_the_timer_running() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").expect("create fake device");
        let mut dog = Watchdog::from_config(&section(WatchdogMode::Auto, &device))
            .expect("present")
            .expect("some");
        dog.arm().expect("arm");
        drop(dog);
        assert_eq!(std::fs::read(&device).expect("read"), b"\n");
    }

    /// On a FIFO (a device that streams, like the real one) the reader sees
    /// the pets as they happen and the `V` right before the close (EOF).
    #[test]
    fn fifo_reader_sees_pets_and_magic_close() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog.fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&device)
            .status()
            .expect("mkfifo");
        assert!(status.success());
        let reader_path = device.clone();
        let reader = std::thread::spawn(move || {
            let mut fifo = File::open(reader_path).expect("open fifo for reading");
            let mut got = Vec::new();
            fifo.read_to_end(&mut got).expect("read fifo");
            got
        });
        let mut dog = Watchdog::from_config(&section(WatchdogMode::Required, &device))
            .expect("present")
            .expect("some");
        dog.arm().expect("arm (blocks until the reader opens)");
        dog.pet().expect("pet");
        dog.disarm().expect("disarm");
        let got = reader.join().expect("reader");
        assert_eq!(got, b"\n\nV");
    }

    /// `required` without the device refuses to start, and says what to do.
    #[test]
    fn required_without_device_fails_with_a_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("no-watchdog");
        let err = Watchdog::from_config(&section(WatchdogMode::Required, &device))
            .expect_err("missing device");
        let shown = err.to_string();
        assert!(shown.contains(&device.display().to_string()), "{shown}");
        assert!(shown.contains("modprobe softdog"), "{shown}");
        assert!(shown.contains("watchdog.mode"), "{shown}");
    }

    /// `auto` without the device runs without one; `off` never looks.
    #[test]
    fn auto_and_off_tolerate_a_missing_device() {
        let missing = Path::new("/nonexistent/watchdog");
        assert!(
            Watchdog::from_config(&section(WatchdogMode::Auto, missing))
                .expect("auto")
                .is_none()
        );
        assert!(
            Watchdog::from_config(&section(WatchdogMode::Off, missing))
                .expect("off")
                .is_none()
        );
    }

    /// A directory is not a device.
    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            Watchdog::from_config(&section(WatchdogMode::Auto, dir.path())).expect_err("directory");
        assert!(err.to_string().contains("not a watchdog device"), "{err}");
    }

    /// A device that cannot be opened for writing gives an open error with a hint.
    #[test]
    fn open_failure_is_explained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog");
        std::fs::write(&device, b"").expect("create");
        let mut dog = Watchdog::from_config(&section(WatchdogMode::Required, &device))
            .expect("present")
            .expect("some");
        std::fs::remove_file(&device).expect("remove");
        std::fs::create_dir(&device).expect("replace with a directory");
        let err = dog.arm().expect_err("cannot open a directory for writing");
        assert!(matches!(err, WatchdogError::Open { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot open watchdog"), "{err}");
        assert!(!dog.is_armed());
    }
}
