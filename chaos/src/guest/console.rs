//! Reading the probe guest's serial console: the markers its `/init` prints.

/// What a probe guest's serial console log says. Built by [`parse_console`].
///
/// Only complete lines count: a console file is read while QEMU still writes it, and
/// a torn last line (`metrodr-ack 1` of what becomes `metrodr-ack 12`) must not be
/// taken for an acknowledgement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleLog {
    /// `metrodr-probe: boot` lines: how many times `/init` started in this log.
    pub boots: u32,
    /// The latest boot printed `metrodr-probe: ready` (it found its resume point and
    /// starts writing). A later `boot` line resets it.
    pub ready: bool,
    /// Every `metrodr-probe: resume-after N`, in order: one per boot that got that far.
    /// N is the highest record the guest found on its disk at boot.
    pub resume_after: Vec<u64>,
    /// How many `metrodr-ack N` lines the whole log holds.
    pub acks: u64,
    /// N of the last `metrodr-ack N` line: the newest record the guest acknowledged.
    pub last_ack: Option<u64>,
    /// The largest N acknowledged anywhere in the log (differs from `last_ack` when a
    /// later boot resumed from a disk that had lost records).
    pub max_ack: Option<u64>,
    /// `metrodr-write-failed N` lines: writes the disk refused (the guest retries).
    pub write_failures: u64,
    /// Other `metrodr-probe:` lines, verbatim from the marker on (`could not load: …`,
    /// `no disk`, `disk full`, `bad metrodr.interval …`). At most [`MAX_PROBLEMS`]
    /// are kept; the rest are counted in `problems_dropped`.
    pub problems: Vec<String>,
    /// Problem lines beyond [`MAX_PROBLEMS`], not kept.
    pub problems_dropped: u64,
    /// What the latest boot said about the service a tcp probe checks (it starts it
    /// after `ready`). A later `boot` line resets it.
    pub service: GuestService,
}

/// The probe guest's TCP service, as its console reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum GuestService {
    /// The latest boot has not said yet.
    #[default]
    Unknown,
    /// `metrodr-probe: listening ADDR port N`: the guest serves HTTP on port N of ADDR.
    Listening { address: String, port: u16 },
    /// `metrodr-probe: no network`: the guest has no NIC (its domain was defined
    /// without a guest network), so nothing can reach it; not a fault of the guest.
    NoNetwork,
}

/// Bound on [`ConsoleLog::problems`]: a guest crash-looping for a day must not make
/// the parser's output grow without limit; the first problems are the telling ones.
pub const MAX_PROBLEMS: usize = 32;

const PROBE: &str = "metrodr-probe: ";
const ACK: &str = "metrodr-ack ";
const WRITE_FAILED: &str = "metrodr-write-failed ";

/// Parses a probe guest's serial console log (see [`ConsoleLog`]).
///
/// Markers are found anywhere in a line, so a kernel message or a `\r` around them
/// does not hide them; a marker with a malformed number is ignored. Never fails:
/// text that is not a marker is the kernel's and is skipped.
pub fn parse_console(text: &str) -> ConsoleLog {
    let mut log = ConsoleLog::default();
    // Everything after the last '\n' may still be being written.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    for line in complete.lines() {
        if let Some(n) = number_after(line, ACK) {
            log.acks += 1;
            log.last_ack = Some(n);
            log.max_ack = Some(log.max_ack.map_or(n, |m| m.max(n)));
        } else if number_after(line, WRITE_FAILED).is_some() {
            log.write_failures += 1;
        } else if let Some(start) = line.find(PROBE) {
            let rest = line[start + PROBE.len()..].trim_end();
            if rest == "boot" {
                log.boots += 1;
                log.ready = false;
                log.service = GuestService::Unknown;
            } else if rest == "ready" {
                log.ready = true;
            } else if let Some(n) = number_after(rest, "resume-after ") {
                log.resume_after.push(n);
            } else if rest == "no network" {
                log.service = GuestService::NoNetwork;
            } else if let Some(service) = listening(rest) {
                log.service = service;
            } else if log.problems.len() < MAX_PROBLEMS {
                log.problems.push(rest.to_owned());
            } else {
                log.problems_dropped += 1;
            }
        }
    }
    log
}

/// `listening ADDR port N` with a valid port, as a [`GuestService::Listening`].
fn listening(rest: &str) -> Option<GuestService> {
    let (address, port) = rest.strip_prefix("listening ")?.rsplit_once(" port ")?;
    let address = address.trim();
    if address.is_empty() || address.contains(char::is_whitespace) {
        return None;
    }
    Some(GuestService::Listening {
        address: address.to_owned(),
        port: port.trim().parse().ok().filter(|&p| p != 0)?,
    })
}

/// The decimal number right after `marker` in `line`, if the marker is there and is
/// followed by at least one digit and then nothing but the line's end or whitespace.
fn number_after(line: &str, marker: &str) -> Option<u64> {
    let start = line.find(marker)? + marker.len();
    let rest = &line[start..];
    let digits_end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    if !rest[digits_end..].trim().is_empty() {
        return None;
    }
    rest[..digits_end].parse().ok()
}
