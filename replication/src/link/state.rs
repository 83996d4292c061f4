//! What a primary's replication link is doing ([`LinkState`]): the link loop sets it,
//! the group's status shows it. Plain data: it never opens a connection.

/// What a primary's replication link is doing, as its status shows it.
///
/// ```text
///  Starting ──► NotReplicated                  (no peer: nothing more happens)
///     │
///     ▼
///   Down ◄────► Resyncing ──► Streaming        (a connection: plan, then stream)
///   │  ▲            │             │
///   ▼  │            └──────┬──────┘
///  HoldingWrites           ▼
///   (sync writes held,    Down                 (the connection ended)
///    permission refused)
///  any ──► Fenced                              (a newer primary exists, or the lease
///                                               ran out: nothing is acknowledged)
/// ```
/// Running alone with the peer outdated is not a link state: it is the status's
/// `degraded`, whatever the link does meanwhile. Serialized as its rendering
/// (`"streaming"`, `"down: why"`), as the status lines always showed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LinkState {
    /// The group was opened; no connection was tried yet.
    #[default]
    Starting,
    /// No peer is configured: the volumes are served unreplicated.
    NotReplicated,
    /// Connected; comparing and copying the regions that may differ. The peer is not
    /// a complete copy until this ends.
    Resyncing,
    /// Connected and in sync: every write is sent as it is made.
    Streaming,
    /// No connection (the last attempt or connection ended for `why`); retrying.
    Down { why: String },
    /// No connection, sync writes are held, and permission to go on without the peer
    /// was refused for `why`; retrying both.
    HoldingWrites { why: String },
    /// This primary acknowledges nothing any more, for `why`.
    Fenced { why: String },
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Starting => f.write_str("starting"),
            LinkState::NotReplicated => f.write_str("not replicated"),
            LinkState::Resyncing => f.write_str("resyncing"),
            LinkState::Streaming => f.write_str("streaming"),
            LinkState::Down { why } => write!(f, "down: {why}"),
            LinkState::HoldingWrites { why } => write!(f, "down, holding writes: {why}"),
            LinkState::Fenced { why } => write!(f, "fenced: {why}"),
        }
    }
}

impl serde::Serialize for LinkState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
