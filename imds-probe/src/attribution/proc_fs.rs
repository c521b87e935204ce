//! What /proc says about processes, through the procfs crate. Own code only where procfs
//! cannot do the job: a bounded command-line read, and /proc/<pid>/status read lossily. Both
//! go through procfs's `Process`, so every file of one process is read relative to the same
//! open /proc/<pid> directory: a pid reused meanwhile fails the read instead of mixing two
//! processes. Nothing here reads /proc/stat (boot time) or other files outside /proc/<pid>,
//! so it works under systemd's `ProcSubset=pid`.

use std::io::{self, Read};

use procfs::{
    FromBufRead, FromRead, ProcError, ProcResult,
    process::{Process, Status},
};

/// Arguments kept from a command line; longer ones are cut.
const MAX_ARGS: usize = 64;
const MAX_ARG_CHARS: usize = 512;
/// Bytes of /proc/<pid>/cmdline read: `parse_cmdline` keeps at most 64 arguments of 512
/// characters, so more would only be thrown away, and a JVM's classpath can run to megabytes.
const MAX_CMDLINE_BYTES: usize = 64 * 1024;

/// The processes present now, those that vanish while listed skipped. Each holds its
/// /proc/<pid> directory open until dropped: take what is needed and drop it, never collect
/// them (a host may run more processes than the daemon may open files).
pub fn processes() -> ProcResult<impl Iterator<Item = Process>> {
    Ok(procfs::process::all_processes()?.filter_map(Result::ok))
}

/// The pids of the processes present now.
pub fn pids() -> io::Result<Vec<u32>> {
    Ok(processes()
        .map_err(io::Error::other)?
        .filter_map(|process| u32::try_from(process.pid).ok())
        .collect())
}

/// The process with this pid, if /proc has it.
pub fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// /proc/<pid>/cmdline, at most `MAX_CMDLINE_BYTES` of it. procfs's `cmdline()` reads it
/// whole, and fails on bytes that are not UTF-8, which an argument may hold.
pub struct RawCmdline {
    pub raw: Vec<u8>,
    /// More bytes followed.
    pub truncated: bool,
}

impl FromRead for RawCmdline {
    fn from_read<R: Read>(r: R) -> ProcResult<Self> {
        let mut raw = Vec::new();
        r.take(MAX_CMDLINE_BYTES as u64 + 1).read_to_end(&mut raw)?;
        let truncated = raw.len() > MAX_CMDLINE_BYTES;
        raw.truncate(MAX_CMDLINE_BYTES);
        Ok(Self { raw, truncated })
    }
}

/// /proc/<pid>/status, parsed by procfs after a lossy conversion: its `Name:` line is the
/// comm, any bytes the process chose, and procfs's own reader fails the whole file on one
/// that is not UTF-8 (and with it the uid and gid).
pub struct LossyStatus(pub Status);

impl FromRead for LossyStatus {
    fn from_read<R: Read>(mut r: R) -> ProcResult<Self> {
        let mut raw = Vec::new();
        r.read_to_end(&mut raw).map_err(ProcError::from)?;
        Status::from_buf_read(String::from_utf8_lossy(&raw).as_bytes()).map(Self)
    }
}

/// NUL-separated argv, bounded. Not yet redacted: see `Redactor`.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    raw.split(|&b| b == 0)
        .take(MAX_ARGS)
        .map(|arg| {
            String::from_utf8_lossy(arg)
                .chars()
                .take(MAX_ARG_CHARS)
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_is_split_and_bounded() {
        assert_eq!(
            parse_cmdline(b"curl\0-sf\0http://169.254.169.254/\0"),
            ["curl", "-sf", "http://169.254.169.254/"]
        );
        let many = "a\0".repeat(100);
        assert_eq!(parse_cmdline(many.as_bytes()).len(), MAX_ARGS);
    }

    #[test]
    fn cmdline_read_stops_at_its_bound() {
        let whole = RawCmdline::from_read(&b"a\0b\0"[..]).unwrap();
        assert_eq!(
            (whole.raw.as_slice(), whole.truncated),
            (&b"a\0b\0"[..], false)
        );
        let long = vec![b'x'; MAX_CMDLINE_BYTES + 10];
        let cut = RawCmdline::from_read(long.as_slice()).unwrap();
        assert_eq!((cut.raw.len(), cut.truncated), (MAX_CMDLINE_BYTES, true));
    }

    #[test]
    fn status_with_a_name_that_is_not_utf8_still_gives_ids() {
        let status = b"Name:\t\xffprobe\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t9\nNgid:\t0\n\
            Pid:\t9\nPPid:\t1\nTracerPid:\t0\nUid:\t1000\t1001\t1002\t1003\n\
            Gid:\t50\t51\t52\t53\nFDSize:\t64\nGroups:\t4 24\nNStgid:\t9\t1\nNSpid:\t9\t1\n\
            NSpgid:\t9\t1\nNSsid:\t9\t1\nThreads:\t1\nSigQ:\t0/63471\nSigPnd:\t0000000000000000\n\
            ShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n\
            SigCgt:\t0000000000000000\nCapInh:\t0000000000000000\nCapPrm:\t0000000000000000\n\
            CapEff:\t0000000000000000\nCapBnd:\t000001ffffffffff\nCapAmb:\t0000000000000000\n\
            voluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\n";
        assert!(
            Status::from_read(&status[..]).is_err(),
            "procfs alone fails"
        );
        let LossyStatus(status) = LossyStatus::from_read(&status[..]).unwrap();
        assert_eq!((status.ruid, status.rgid), (1000, 50));
        assert_eq!(status.nspid, Some(vec![9, 1]));
        assert_eq!(status.name, "\u{fffd}probe");
    }
}
