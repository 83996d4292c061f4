//! The agent's journal: which commands it started and finished, and what it did on its
//! own (fencing) — so that every command runs **at most once**, even when the
//! orchestrator delivers it again after a leader change or an agent restart.
//!
//! One JSON object per line, appended and fsynced before the action it describes is
//! taken (`begin`) or reported (`finished`, with the typed result). On redelivery:
//! `finished` → report the stored result; `begin` without one (the agent died while
//! executing) → report that the outcome is unknown, never run it again. The file is
//! compacted when it grows past [`COMPACT_AT`] lines, keeping the newest [`KEEP`]
//! commands.
//!
//! Lines written by agent protocol 1 (results and events as text: `done`, `event`) are
//! still read, so that no command runs twice across an upgrade: a command such an
//! agent finished is reported as interrupted (its typed result is unknown), and its
//! unreported text events are dropped with a warning.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ids::CommandId;
use proto::agent::{AgentEvent, Executed, FailureKind};
use serde::{Deserialize, Serialize};

pub const COMPACT_AT: usize = 20_000;
pub const KEEP: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Line {
    Begin {
        id: CommandId,
    },
    /// How the command went.
    Finished {
        id: CommandId,
        executed: Executed,
    },
    /// Protocol 1's result line (text only): read, never written.
    Done {
        id: CommandId,
        ok: bool,
        message: String,
    },
    /// Something the agent did on its own, reported to the orchestrator later.
    AgentEvent {
        seq: u64,
        event: AgentEvent,
    },
    /// Protocol 1's event line (text only): read, never written.
    Event {
        seq: u64,
        text: String,
    },
    EventReported {
        seq: u64,
    },
}

/// What the journal knows about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Started, never finished: the agent stopped while running it.
    Interrupted,
    Done(Executed),
}

#[derive(Debug, Default)]
struct Inner {
    commands: BTreeMap<CommandId, Seen>,
    events: BTreeMap<u64, (AgentEvent, bool)>,
    lines: usize,
}

/// What an agent starting over learns from its journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Restored {
    /// Every command it remembers: finished (with the result) or interrupted.
    pub commands: BTreeMap<CommandId, Seen>,
    /// Events the cluster may not have, oldest first.
    pub unreported: Vec<(u64, AgentEvent)>,
    /// The highest event number in the journal (the next event takes a higher one).
    pub last_event_seq: u64,
}

impl Restored {
    /// What these lines say (in the order they were written).
    pub fn from_lines(lines: impl IntoIterator<Item = Line>) -> Restored {
        let mut inner = Inner::default();
        for l in lines {
            apply(&mut inner, l);
        }
        Restored::of(&inner)
    }

    fn of(inner: &Inner) -> Restored {
        Restored {
            commands: inner.commands.clone(),
            unreported: inner
                .events
                .iter()
                .filter(|(_, (_, reported))| !reported)
                .map(|(seq, (event, _))| (*seq, event.clone()))
                .collect(),
            last_event_seq: inner.events.keys().next_back().copied().unwrap_or(0),
        }
    }
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    compact_at: usize,
    keep: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {what}")]
pub struct JournalError {
    pub path: PathBuf,
    pub what: String,
}

impl Journal {
    /// Open (or create) the journal; lines that do not parse (a torn last write) are
    /// skipped with a warning, never fatal.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Self::with_limits(path, COMPACT_AT, KEEP)
    }

    /// Open with other compaction limits (tests use small ones).
    pub fn with_limits(
        path: &Path,
        compact_at: usize,
        keep: usize,
    ) -> Result<Journal, JournalError> {
        let err = |what: String| JournalError {
            path: path.to_path_buf(),
            what,
        };
        let mut inner = Inner::default();
        match File::open(path) {
            Ok(f) => {
                for (n, line) in BufReader::new(f).lines().enumerate() {
                    let line = line.map_err(|e| err(format!("read: {e}")))?;
                    inner.lines += 1;
                    match serde_json::from_str::<Line>(&line) {
                        Ok(l) => apply(&mut inner, l),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), line = n + 1, "skipping a damaged journal line: {e}")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("open: {e}"))),
        }
        Ok(Journal {
            path: path.to_path_buf(),
            inner: Mutex::new(inner),
            compact_at,
            keep,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn seen(&self, id: CommandId) -> Seen {
        self.lock().commands.get(&id).cloned().unwrap_or(Seen::New)
    }

    /// The highest command id this agent has ever seen.
    pub fn last_id(&self) -> CommandId {
        self.lock()
            .commands
            .keys()
            .next_back()
            .copied()
            .unwrap_or_default()
    }

    /// Durably record a line, then update the in-memory view.
    pub fn record(&self, line: Line) -> Result<(), JournalError> {
        let mut inner = self.lock();
        let err = |what: String| JournalError {
            path: self.path.clone(),
            what,
        };
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| err(format!("open for append: {e}")))?;
        let mut text = serde_json::to_string(&line).map_err(|e| err(e.to_string()))?;
        text.push('\n');
        f.write_all(text.as_bytes())
            .map_err(|e| err(format!("write: {e}")))?;
        f.sync_data().map_err(|e| err(format!("fsync: {e}")))?;
        apply(&mut inner, line);
        inner.lines += 1;
        if inner.lines > self.compact_at {
            self.compact(&mut inner)?;
        }
        Ok(())
    }

    /// Events not yet reported to the orchestrator.
    pub fn unreported_events(&self) -> Vec<(u64, AgentEvent)> {
        Restored::of(&self.lock()).unreported
    }

    /// What the journal says, for an agent starting over.
    pub fn restored(&self) -> Restored {
        Restored::of(&self.lock())
    }

    /// Record an event (durably) and return its sequence number.
    pub fn event(&self, event: AgentEvent) -> Result<u64, JournalError> {
        let seq = self.lock().events.keys().next_back().map_or(1, |s| s + 1);
        self.record(Line::AgentEvent { seq, event })?;
        Ok(seq)
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), JournalError> {
        let err = |what: String| JournalError {
            path: self.path.clone(),
            what,
        };
        let keep_from = inner
            .commands
            .keys()
            .rev()
            .nth(self.keep)
            .copied()
            .unwrap_or_default();
        inner.commands.retain(|id, _| *id > keep_from);
        inner.events.retain(|_, (_, reported)| !*reported);
        let tmp = self.path.with_extension("compact");
        let mut f =
            File::create(&tmp).map_err(|e| err(format!("create {}: {e}", tmp.display())))?;
        let mut lines = 0;
        let mut put = |l: &Line| -> Result<(), JournalError> {
            let mut t = serde_json::to_string(l).map_err(|e| err(e.to_string()))?;
            t.push('\n');
            lines += 1;
            f.write_all(t.as_bytes())
                .map_err(|e| err(format!("write: {e}")))
        };
        for (id, seen) in &inner.commands {
            match seen {
                Seen::Done(executed) => put(&Line::Finished {
                    id: *id,
                    executed: executed.clone(),
                })?,
                Seen::Interrupted | Seen::New => put(&Line::Begin { id: *id })?,
            }
        }
        for (seq, (event, _)) in &inner.events {
            put(&Line::AgentEvent {
                seq: *seq,
                event: event.clone(),
            })?;
        }
        f.sync_all().map_err(|e| err(format!("fsync: {e}")))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(format!("rename: {e}")))?;
        inner.lines = lines;
        Ok(())
    }
}

fn apply(inner: &mut Inner, line: Line) {
    match line {
        Line::Begin { id } => {
            inner.commands.entry(id).or_insert(Seen::Interrupted);
        }
        Line::Finished { id, executed } => {
            inner.commands.insert(id, Seen::Done(executed));
        }
        Line::Done { id, ok, message } => {
            let how = if ok { "succeeded" } else { "failed" };
            inner.commands.insert(
                id,
                Seen::Done(Executed::failed(
                    FailureKind::Interrupted,
                    format!(
                        "an agent of protocol 1 ran this command ({how}: {message}); its typed result is unknown"
                    ),
                )),
            );
        }
        Line::AgentEvent { seq, event } => {
            inner.events.insert(seq, (event, false));
        }
        Line::Event { seq, text } => {
            tracing::warn!(
                seq,
                "dropping an event of agent protocol 1 that was never reported: {text}"
            );
        }
        Line::EventReported { seq } => {
            if let Some(e) = inner.events.get_mut(&seq) {
                e.1 = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn started() -> Executed {
        Executed::done(proto::agent::CommandOutcome::Started {
            domain: "web-1".into(),
            state: proto::agent::VmState::Running,
        })
    }

    #[test]
    fn commands_are_remembered_across_reopen_and_interruptions_are_visible() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.seen(CommandId(1)), Seen::New);
        j.record(Line::Begin { id: CommandId(1) }).unwrap();
        j.record(Line::Finished {
            id: CommandId(1),
            executed: started(),
        })
        .unwrap();
        j.record(Line::Begin { id: CommandId(2) }).unwrap();
        let seq = j.event(AgentEvent::LeaseRegained).unwrap();
        drop(j);
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.seen(CommandId(1)), Seen::Done(started()));
        assert_eq!(j.seen(CommandId(2)), Seen::Interrupted);
        assert_eq!(j.last_id(), CommandId(2));
        assert_eq!(
            j.unreported_events(),
            vec![(seq, AgentEvent::LeaseRegained)]
        );
        j.record(Line::EventReported { seq }).unwrap();
        assert!(Journal::open(&p).unwrap().unreported_events().is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        std::fs::write(
            &p,
            "{\"kind\":\"begin\",\"id\":7}\n{\"kind\":\"done\",\"id\":7,\"ok\":tr",
        )
        .unwrap();
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.seen(CommandId(7)), Seen::Interrupted);
    }

    /// A journal of agent protocol 1 (results and events as text): no command it ran
    /// runs again, and what it said is kept for people.
    #[test]
    fn a_protocol_1_journal_runs_nothing_twice() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        std::fs::write(
            &p,
            "{\"kind\":\"begin\",\"id\":7}\n{\"kind\":\"done\",\"id\":7,\"ok\":true,\"message\":\"web-1: running\"}\n\
             {\"kind\":\"begin\",\"id\":8}\n{\"kind\":\"event\",\"seq\":1,\"text\":\"lease regained\"}\n",
        )
        .unwrap();
        let j = Journal::open(&p).unwrap();
        let Seen::Done(Executed::Failed { failure }) = j.seen(CommandId(7)) else {
            panic!("{:?}", j.seen(CommandId(7)))
        };
        assert_eq!(failure.kind, FailureKind::Interrupted);
        assert!(
            failure.message.contains("web-1: running"),
            "{}",
            failure.message
        );
        assert_eq!(j.seen(CommandId(8)), Seen::Interrupted);
        assert!(j.unreported_events().is_empty());
    }

    #[test]
    fn compaction_keeps_the_newest_commands() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.jsonl");
        let j = Journal::with_limits(&p, 40, 10).unwrap();
        for id in 1..=30 {
            let id = CommandId(id);
            j.record(Line::Begin { id }).unwrap();
            j.record(Line::Finished {
                id,
                executed: started(),
            })
            .unwrap();
        }
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert!(lines <= 40, "{lines} lines");
        let j = Journal::open(&p).unwrap();
        assert!(matches!(j.seen(CommandId(30)), Seen::Done(_)));
        assert_eq!(j.seen(CommandId(1)), Seen::New, "the oldest were dropped");
    }
}
