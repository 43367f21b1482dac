//! `libjepsen_clockshim.so`: the harness's injectable clock, preloaded
//! (`LD_PRELOAD`) into a process the harness starts, so the real,
//! unmodified binaries run on a clock the harness controls while they run.
//!
//! # What it fakes
//!
//! `clock_gettime` on `CLOCK_REALTIME`, `CLOCK_MONOTONIC` and
//! `CLOCK_BOOTTIME` (and their `_COARSE`, `_RAW` and `_ALARM` variants),
//! `gettimeofday` and `time`: everything a Rust program's `SystemTime`,
//! `Instant`, tokio's timers and the agent's `CLOCK_BOOTTIME` lease clock
//! read. Each reading `t` of the real clock becomes
//!
//! ```text
//! anchor + (t − anchor) × rate + offset
//! ```
//!
//! with one anchor per clock (its real value when the harness created the
//! control file), one `rate` for all three, and two offsets: one for the
//! wall clock, one shared by the monotonic and boot clocks. Per-CPU and
//! per-thread CPU-time clocks pass through untouched.
//!
//! # The control file
//!
//! `JEPSEN_CLOCK` names a 56-byte file the harness wrote before the
//! process started ([`Layout`]): a magic number, the rate, the three
//! anchors (fixed for the file's life, so a restarted process continues the
//! same clock), and the two offsets. The library maps it shared and reads
//! the offsets with one atomic load each on every call, so the harness can
//! *jump* a running process's clock with one atomic store: every thread
//! sees the old offset or the new one, never a mixture, and a clock never
//! steps back unless the harness moves an offset back (it only ever does
//! so with the wall clock, as an NTP step does). libfaketime, which
//! re-parses a text file into shared buffers, cannot promise that in a
//! multi-threaded process.
//!
//! A process started with `JEPSEN_CLOCK` naming a missing or malformed
//! file aborts at load with a message saying so: a test that asked for a
//! skewed clock must never run on the real one unnoticed. Without
//! `JEPSEN_CLOCK` the library passes every call through.
//!
//! # Sleeps and timeouts
//!
//! A process's timers must run on its clock too, or a fast clock would
//! never make a wait end sooner in real time (tokio computes a timeout from
//! its faked `Instant` and hands it to `epoll_wait` as a real duration).
//! So the timeouts of `epoll_wait`, `epoll_pwait`, `poll`, `ppoll`,
//! `nanosleep` and `clock_nanosleep` are divided by `rate`, and an absolute
//! `clock_nanosleep` deadline on a faked clock is mapped back to the real
//! clock, as a machine whose oscillator is off would time them.
//!
//! Not intercepted: absolute deadlines computed from a faked clock and given
//! to the kernel by raw system call (a `futex` wait with
//! `FUTEX_WAIT_BITSET`, as the standard library's `Condvar::wait_timeout`
//! does) end early or late by the offset; in the witness and the agent only
//! idle threads of the blocking pool wait that way. Calls made from inside
//! the C library itself (`timespec_get`, `clock()`, `sleep()`) bypass the
//! interposition; the product does not make them.
//!
//! The layout is written out again on the harness's side
//! (`jepsen::nemesis::clock`, which creates the file: a cdylib is not a
//! library Rust can link), and `jepsen/tests/faults.rs` runs real
//! processes under this library to hold the two together.

#![allow(unsafe_code)] // an LD_PRELOAD library is made of FFI and shared memory

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicI64, AtomicPtr, AtomicU64, Ordering};

/// `JCLOCK01`, little-endian, at offset 0.
pub const MAGIC: u64 = u64::from_le_bytes(*b"JCLOCK01");

/// The control file, as mapped.
#[repr(C)]
pub struct Layout {
    pub magic: AtomicU64,
    /// `f64` bits.
    pub rate: AtomicU64,
    /// Real `CLOCK_REALTIME`, `CLOCK_MONOTONIC`, `CLOCK_BOOTTIME` (ns) at
    /// the file's creation.
    pub anchor_real_ns: AtomicI64,
    pub anchor_mono_ns: AtomicI64,
    pub anchor_boot_ns: AtomicI64,
    /// Added to the monotonic and boot clocks; only ever grows.
    pub mono_offset_ns: AtomicI64,
    /// Added to the wall clock.
    pub real_offset_ns: AtomicI64,
}

/// The file's size.
pub const SIZE: usize = std::mem::size_of::<Layout>();

type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> c_int;

/// The C library's `clock_gettime`.
static REAL: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
/// The mapped control file; null: pass through.
static CONTROL: AtomicPtr<Layout> = AtomicPtr::new(ptr::null_mut());

/// Write `msg` to stderr and abort: the process must not run on a clock it
/// was not asked to.
fn die(msg: &str) -> ! {
    let line = format!("jepsen clock shim: {msg}\n");
    // SAFETY: writes the bytes of a live String to fd 2.
    unsafe {
        libc::write(2, line.as_ptr().cast::<c_void>(), line.len());
        libc::abort()
    }
}

/// The next `clock_gettime` after this library (the C library's).
fn real_clock_gettime() -> ClockGettime {
    let mut f = REAL.load(Ordering::Acquire);
    if f.is_null() {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, c"clock_gettime".as_ptr()) };
        if f.is_null() {
            die("the C library's clock_gettime was not found (dlsym RTLD_NEXT)");
        }
        REAL.store(f, Ordering::Release);
    }
    // SAFETY: the symbol is the C library's clock_gettime, of this type.
    unsafe { std::mem::transmute::<*mut c_void, ClockGettime>(f) }
}

/// Map the file `JEPSEN_CLOCK` names, at load.
extern "C" fn init() {
    real_clock_gettime();
    // SAFETY: getenv with a NUL-terminated name; the result is read at once.
    let path = unsafe { libc::getenv(c"JEPSEN_CLOCK".as_ptr()) };
    if path.is_null() {
        return;
    }
    // SAFETY: getenv returned a NUL-terminated string.
    let shown = unsafe { std::ffi::CStr::from_ptr(path) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: open with a NUL-terminated path.
    let fd = unsafe { libc::open(path as *const c_char, libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        die(&format!(
            "JEPSEN_CLOCK={shown}: cannot open: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fstat into a zeroed stat of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_size as usize) < SIZE {
        die(&format!(
            "JEPSEN_CLOCK={shown}: not a control file of {SIZE} bytes"
        ));
    }
    // SAFETY: maps SIZE bytes of an open file shared and read-only; the
    // mapping outlives the descriptor and the process never unmaps it.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            SIZE,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    // SAFETY: closing the descriptor we opened; the mapping stays.
    unsafe { libc::close(fd) };
    if p == libc::MAP_FAILED {
        die(&format!(
            "JEPSEN_CLOCK={shown}: mmap failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    let layout = p.cast::<Layout>();
    // SAFETY: the mapping is SIZE bytes, page-aligned, and lives forever;
    // atomics have the layout of their integers.
    let magic = unsafe { (*layout).magic.load(Ordering::Acquire) };
    let rate = f64::from_bits(unsafe { (*layout).rate.load(Ordering::Acquire) });
    if magic != MAGIC || !(rate.is_finite() && rate > 0.0) {
        die(&format!(
            "JEPSEN_CLOCK={shown}: bad magic or rate (magic {magic:#x}, rate {rate})"
        ));
    }
    CONTROL.store(layout, Ordering::Release);
}

/// Runs [`init`] when the library is loaded, before `main`.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// Which anchor and offset a clock uses.
enum Class {
    Real,
    Mono,
    Boot,
}

fn class(clock: libc::clockid_t) -> Option<Class> {
    match clock {
        libc::CLOCK_REALTIME | libc::CLOCK_REALTIME_COARSE | libc::CLOCK_REALTIME_ALARM => {
            Some(Class::Real)
        }
        libc::CLOCK_MONOTONIC | libc::CLOCK_MONOTONIC_RAW | libc::CLOCK_MONOTONIC_COARSE => {
            Some(Class::Mono)
        }
        libc::CLOCK_BOOTTIME | libc::CLOCK_BOOTTIME_ALARM => Some(Class::Boot),
        _ => None,
    }
}

/// A clock class's anchor, the rate, and its offset now.
fn parts(layout: &Layout, c: Class) -> (i64, f64, i64) {
    let (anchor, offset) = match c {
        Class::Real => (&layout.anchor_real_ns, &layout.real_offset_ns),
        Class::Mono => (&layout.anchor_mono_ns, &layout.mono_offset_ns),
        Class::Boot => (&layout.anchor_boot_ns, &layout.mono_offset_ns),
    };
    (
        anchor.load(Ordering::Relaxed),
        f64::from_bits(layout.rate.load(Ordering::Relaxed)),
        offset.load(Ordering::Acquire),
    )
}

/// The faked value of a real reading `t_ns` of a clock of class `c`.
fn fake(layout: &Layout, c: Class, t_ns: i64) -> i64 {
    let (anchor, rate, offset) = parts(layout, c);
    let scaled = if rate == 1.0 {
        t_ns
    } else {
        anchor + ((t_ns - anchor) as f64 * rate) as i64
    };
    scaled + offset
}

/// The interposed `clock_gettime`.
///
/// # Safety
/// As the C library's: `tp` must be valid for a write of one `timespec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_gettime(clock: libc::clockid_t, tp: *mut libc::timespec) -> c_int {
    // SAFETY: forwarded with the caller's arguments.
    let rc = unsafe { real_clock_gettime()(clock, tp) };
    let layout = CONTROL.load(Ordering::Acquire);
    if rc != 0 || tp.is_null() || layout.is_null() {
        return rc;
    }
    let Some(c) = class(clock) else {
        return rc;
    };
    // SAFETY: the real call just wrote *tp; the mapping lives forever.
    unsafe {
        let t = (*tp).tv_sec * 1_000_000_000 + (*tp).tv_nsec;
        let f = fake(&*layout, c, t);
        (*tp).tv_sec = f.div_euclid(1_000_000_000);
        (*tp).tv_nsec = f.rem_euclid(1_000_000_000);
    }
    rc
}

/// The interposed `gettimeofday`: the faked wall clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn gettimeofday(tv: *mut libc::timeval, tz: *mut c_void) -> c_int {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live local timespec.
    let rc = unsafe { clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    if rc != 0 {
        return rc;
    }
    if !tv.is_null() {
        // SAFETY: the caller passed a writable timeval.
        unsafe {
            (*tv).tv_sec = ts.tv_sec;
            (*tv).tv_usec = ts.tv_nsec / 1000;
        }
    }
    if !tz.is_null() {
        // SAFETY: the obsolete struct timezone is two ints; zero them.
        unsafe { ptr::write_bytes(tz.cast::<u8>(), 0, 2 * std::mem::size_of::<c_int>()) };
    }
    0
}

/// The interposed `time`: the faked wall clock's seconds.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn time(tloc: *mut libc::time_t) -> libc::time_t {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live local timespec.
    if unsafe { clock_gettime(libc::CLOCK_REALTIME, &mut ts) } != 0 {
        return -1;
    }
    if !tloc.is_null() {
        // SAFETY: the caller passed a writable time_t.
        unsafe { *tloc = ts.tv_sec };
    }
    ts.tv_sec
}

/// The next definition of `name` after this library, cached in `slot`.
fn next(slot: &AtomicPtr<c_void>, name: &std::ffi::CStr) -> *mut c_void {
    let mut f = slot.load(Ordering::Acquire);
    if f.is_null() {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        if f.is_null() {
            die(&format!(
                "the C library's {name:?} was not found (dlsym RTLD_NEXT)"
            ));
        }
        slot.store(f, Ordering::Release);
    }
    f
}

/// The rate, when a control file is mapped and the rate is not 1.
fn rate() -> Option<f64> {
    let layout = CONTROL.load(Ordering::Acquire);
    if layout.is_null() {
        return None;
    }
    // SAFETY: the mapping lives forever.
    let r = f64::from_bits(unsafe { (*layout).rate.load(Ordering::Relaxed) });
    (r != 1.0).then_some(r)
}

/// A millisecond timeout on the faked clock as real milliseconds (rounded
/// up, so a timer never fires before its faked deadline); negative and
/// zero timeouts are kept.
fn scale_ms(timeout: c_int) -> c_int {
    match rate() {
        Some(r) if timeout > 0 => {
            (f64::from(timeout) / r).ceil().min(f64::from(c_int::MAX)) as c_int
        }
        _ => timeout,
    }
}

/// A relative timespec on the faked clock as a real one.
fn scale_ts(ts: &libc::timespec) -> libc::timespec {
    let Some(r) = rate() else { return *ts };
    times(ts, 1.0 / r)
}

/// `ts` times `k`, rounded up.
fn times(ts: &libc::timespec, k: f64) -> libc::timespec {
    let ns = (ts.tv_sec as f64 * 1e9 + ts.tv_nsec as f64) * k;
    let ns = ns.ceil().clamp(0.0, i64::MAX as f64) as i64;
    libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    }
}

/// After an interrupted relative sleep: the real time left in `rem` back
/// on the faked clock, so a caller that sleeps `rem` again (as
/// `std::thread::sleep` does) is not scaled twice.
///
/// # Safety
/// `rem` is null or valid for a read and a write of one timespec.
unsafe fn unscale_rem(rem: *mut libc::timespec) {
    if let (Some(r), false) = (rate(), rem.is_null()) {
        // SAFETY: as the caller promised.
        unsafe { *rem = times(&*rem, r) };
    }
}

static EPOLL_WAIT: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static EPOLL_PWAIT: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static POLL: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static PPOLL: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static NANOSLEEP: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());
static CLOCK_NANOSLEEP: AtomicPtr<c_void> = AtomicPtr::new(ptr::null_mut());

/// The interposed `epoll_wait`: its timeout on the faked clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
) -> c_int {
    type F = unsafe extern "C" fn(c_int, *mut libc::epoll_event, c_int, c_int) -> c_int;
    // SAFETY: the C library's epoll_wait, of this type, with the caller's arguments.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&EPOLL_WAIT, c"epoll_wait"));
        f(epfd, events, maxevents, scale_ms(timeout))
    }
}

/// The interposed `epoll_pwait`: its timeout on the faked clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut libc::epoll_event,
    maxevents: c_int,
    timeout: c_int,
    sigmask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        c_int,
        *mut libc::epoll_event,
        c_int,
        c_int,
        *const libc::sigset_t,
    ) -> c_int;
    // SAFETY: the C library's epoll_pwait, of this type, with the caller's arguments.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&EPOLL_PWAIT, c"epoll_pwait"));
        f(epfd, events, maxevents, scale_ms(timeout), sigmask)
    }
}

/// The interposed `poll`: its timeout on the faked clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, nfds: libc::nfds_t, timeout: c_int) -> c_int {
    type F = unsafe extern "C" fn(*mut libc::pollfd, libc::nfds_t, c_int) -> c_int;
    // SAFETY: the C library's poll, of this type, with the caller's arguments.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&POLL, c"poll"));
        f(fds, nfds, scale_ms(timeout))
    }
}

/// The interposed `ppoll`: its timeout on the faked clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ppoll(
    fds: *mut libc::pollfd,
    nfds: libc::nfds_t,
    tmo: *const libc::timespec,
    sigmask: *const libc::sigset_t,
) -> c_int {
    type F = unsafe extern "C" fn(
        *mut libc::pollfd,
        libc::nfds_t,
        *const libc::timespec,
        *const libc::sigset_t,
    ) -> c_int;
    // SAFETY: the C library's ppoll, of this type; `tmo` is the caller's
    // (or null), read once.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&PPOLL, c"ppoll"));
        if tmo.is_null() {
            return f(fds, nfds, tmo, sigmask);
        }
        let real = scale_ts(&*tmo);
        f(fds, nfds, &real, sigmask)
    }
}

/// The interposed `nanosleep`: the sleep on the faked clock.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nanosleep(req: *const libc::timespec, rem: *mut libc::timespec) -> c_int {
    type F = unsafe extern "C" fn(*const libc::timespec, *mut libc::timespec) -> c_int;
    // SAFETY: the C library's nanosleep, of this type; `req` is the
    // caller's, read once.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&NANOSLEEP, c"nanosleep"));
        if req.is_null() {
            return f(req, rem);
        }
        let real = scale_ts(&*req);
        let rc = f(&real, rem);
        if rc != 0 {
            unscale_rem(rem);
        }
        rc
    }
}

/// The interposed `clock_nanosleep`: a relative sleep on the faked clock;
/// an absolute deadline on a faked clock mapped back to the real one.
///
/// # Safety
/// As the C library's.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const libc::timespec,
    rem: *mut libc::timespec,
) -> c_int {
    type F = unsafe extern "C" fn(
        libc::clockid_t,
        c_int,
        *const libc::timespec,
        *mut libc::timespec,
    ) -> c_int;
    // SAFETY: the C library's clock_nanosleep, of this type; `req` is the
    // caller's, read once; the mapping lives forever.
    unsafe {
        let f = std::mem::transmute::<*mut c_void, F>(next(&CLOCK_NANOSLEEP, c"clock_nanosleep"));
        let layout = CONTROL.load(Ordering::Acquire);
        if req.is_null() || layout.is_null() {
            return f(clock, flags, req, rem);
        }
        if flags & libc::TIMER_ABSTIME == 0 {
            let real = scale_ts(&*req);
            let rc = f(clock, flags, &real, rem);
            if rc == libc::EINTR {
                unscale_rem(rem);
            }
            return rc;
        }
        let Some(c) = class(clock) else {
            return f(clock, flags, req, rem);
        };
        let deadline = (*req).tv_sec * 1_000_000_000 + (*req).tv_nsec;
        let real = unfake(&*layout, c, deadline);
        let ts = libc::timespec {
            tv_sec: real.div_euclid(1_000_000_000),
            tv_nsec: real.rem_euclid(1_000_000_000),
        };
        f(clock, flags, &ts, rem)
    }
}

/// The real reading at which a clock of class `c` shows `fake_ns` (with
/// the offsets in force now).
fn unfake(layout: &Layout, c: Class, fake_ns: i64) -> i64 {
    let (anchor, rate, offset) = parts(layout, c);
    let unshifted = fake_ns - offset;
    anchor + ((unshifted - anchor) as f64 / rate).ceil() as i64
}
