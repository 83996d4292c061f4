//! The server's side of option haggling as a pure state machine: one client option
//! in, the option replies to send and what to do next out. The I/O shell (the
//! `server` module) only reads frames, calls [`Negotiation::on_option`] and writes
//! what it returns.
//!
//! ```text
//!            client flags ok
//!   start ───────────────────▶ Haggling ──(any option)──▶ Haggling
//!                                 │  │
//!          OPT_GO ok / EXPORT_NAME│  │OPT_ABORT, EXPORT_NAME unknown,
//!                                 ▼  ▼too many options
//!                          Transmit   Close
//! ```
//!
//! Must never: answer an option it does not implement with anything but
//! `NBD_REP_ERR_UNSUP` (TLS, extended headers, future options), enter transmission
//! without the export's `NBD_INFO_EXPORT`, or keep a metadata context selected for
//! another export than the one finally chosen.

use super::options::{
    Info, InfoRequest, MetaContextRequest, OptionDataError, encode_export_name_reply,
    encode_rep_meta_context, encode_rep_server,
};
use super::proto::*;

/// What the handshake needs to know about one export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
    /// The backend's cache is shared by all connections (see `NBD_FLAG_CAN_MULTI_CONN`).
    pub multi_conn: bool,
}

/// The id this server gives `base:allocation` in `NBD_OPT_SET_META_CONTEXT`.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// How many options one connection may send before the server hangs up: a client
/// looping on `NBD_OPT_INFO` forever is a denial of service.
pub const MAX_OPTIONS: u32 = 1024;

/// One option reply to send, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A fixed-newstyle option reply.
    Option {
        option: u32,
        reply_type: u32,
        payload: Vec<u8>,
    },
    /// Raw bytes (the `NBD_OPT_EXPORT_NAME` reply has no option-reply framing).
    Raw(Vec<u8>),
}

/// What the connection does after sending the replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Continue,
    Transmit(Session),
    Close(String),
}

/// What the transmission phase needs from the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Index into the export list given to [`Negotiation::on_option`].
    pub export: usize,
    pub structured_replies: bool,
    /// The context id of `base:allocation`, when the client selected it for this export.
    pub base_allocation: Option<u32>,
    pub transmission_flags: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub next: Next,
}

impl Outcome {
    fn one(option: u32, reply_type: u32, payload: Vec<u8>) -> Outcome {
        Outcome {
            replies: vec![Reply::Option {
                option,
                reply_type,
                payload,
            }],
            next: Next::Continue,
        }
    }

    fn error(option: u32, reply_type: u32, message: &str) -> Outcome {
        Outcome::one(
            option,
            reply_type,
            truncate_str(message, MAX_STRING).as_bytes().to_vec(),
        )
    }

    fn close(why: impl Into<String>) -> Outcome {
        Outcome {
            replies: Vec::new(),
            next: Next::Close(why.into()),
        }
    }
}

/// Negotiation state of one connection.
#[derive(Debug, Clone, Default)]
pub struct Negotiation {
    no_zeroes: bool,
    structured_replies: bool,
    /// `base:allocation` selected by the last SET_META_CONTEXT, for this export index.
    meta_for_export: Option<usize>,
    options_seen: u32,
}

/// The handshake flags this server sends.
pub const SERVER_HANDSHAKE_FLAGS: u16 = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES;

/// Resolve an export name: an exact match, or the empty (default) name selecting the
/// only export when there is exactly one.
pub fn resolve_export(exports: &[ExportInfo], name: &str) -> Option<usize> {
    if let Some(i) = exports.iter().position(|e| e.name == name) {
        return Some(i);
    }
    if name.is_empty() && exports.len() == 1 {
        Some(0)
    } else {
        None
    }
}

/// The transmission flags for an export.
pub fn transmission_flags(export: &ExportInfo, structured_replies: bool) -> u16 {
    let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH;
    if export.read_only {
        f |= TFLAG_READ_ONLY;
    } else {
        f |= TFLAG_SEND_FUA | TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
    }
    if export.multi_conn {
        f |= TFLAG_CAN_MULTI_CONN;
    }
    if structured_replies {
        // Reads are always answered with one content chunk, so "don't fragment" holds.
        f |= TFLAG_SEND_DF;
    }
    f
}

impl Negotiation {
    /// Start after the client's 32-bit flags; unknown flags end the connection, as
    /// the protocol requires. A client without `C_FIXED_NEWSTYLE` is served as fixed
    /// newstyle anyway (it will only send `NBD_OPT_EXPORT_NAME`, which works the same).
    pub fn new(client_flags: u32) -> Result<Negotiation, String> {
        let known = FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES;
        if client_flags & !known != 0 {
            return Err(format!("unknown client flags {client_flags:#x}"));
        }
        Ok(Negotiation {
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            ..Negotiation::default()
        })
    }

    pub fn structured_replies(&self) -> bool {
        self.structured_replies
    }

    /// An option whose data was longer than [`MAX_OPTION_DATA`] and was discarded.
    pub fn on_oversized_option(&mut self, option: u32, length: u32) -> Outcome {
        if let Some(o) = self.count_option() {
            return o;
        }
        if option == OPT_EXPORT_NAME {
            return Outcome::close(format!("NBD_OPT_EXPORT_NAME with {length} bytes of name"));
        }
        Outcome::error(option, REP_ERR_TOO_BIG, "option data too long")
    }

    fn count_option(&mut self) -> Option<Outcome> {
        self.options_seen += 1;
        (self.options_seen > MAX_OPTIONS)
            .then(|| Outcome::close(format!("more than {MAX_OPTIONS} options")))
    }

    /// Handle one option with its complete data.
    pub fn on_option(&mut self, exports: &[ExportInfo], option: u32, data: &[u8]) -> Outcome {
        if let Some(o) = self.count_option() {
            return o;
        }
        match option {
            OPT_EXPORT_NAME => self.export_name(exports, data),
            OPT_ABORT => Outcome {
                replies: vec![Reply::Option {
                    option,
                    reply_type: REP_ACK,
                    payload: Vec::new(),
                }],
                next: Next::Close("client sent NBD_OPT_ABORT".into()),
            },
            OPT_LIST => {
                if !data.is_empty() {
                    return Outcome::error(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                }
                let mut replies: Vec<Reply> = exports
                    .iter()
                    .map(|e| Reply::Option {
                        option,
                        reply_type: REP_SERVER,
                        payload: encode_rep_server(&e.name, &e.description),
                    })
                    .collect();
                replies.push(Reply::Option {
                    option,
                    reply_type: REP_ACK,
                    payload: Vec::new(),
                });
                Outcome {
                    replies,
                    next: Next::Continue,
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return Outcome::error(
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STRUCTURED_REPLY takes no data",
                    );
                }
                self.structured_replies = true;
                Outcome::one(option, REP_ACK, Vec::new())
            }
            OPT_INFO | OPT_GO => self.info_or_go(exports, option, data),
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(exports, option, data)
            }
            OPT_STARTTLS => Outcome::error(
                option,
                REP_ERR_UNSUP,
                "TLS is not supported (unix socket export)",
            ),
            OPT_EXTENDED_HEADERS => {
                Outcome::error(option, REP_ERR_UNSUP, "extended headers are not supported")
            }
            _ => Outcome::error(option, REP_ERR_UNSUP, "unknown option"),
        }
    }

    fn export_name(&mut self, exports: &[ExportInfo], data: &[u8]) -> Outcome {
        let name = match std::str::from_utf8(data) {
            Ok(n) => n,
            Err(_) => return Outcome::close("NBD_OPT_EXPORT_NAME with a non-UTF-8 name"),
        };
        let Some(i) = resolve_export(exports, name) else {
            return Outcome::close(format!("NBD_OPT_EXPORT_NAME for unknown export {name:?}"));
        };
        let session = self.session(exports, i);
        let raw =
            encode_export_name_reply(exports[i].size, session.transmission_flags, self.no_zeroes);
        Outcome {
            replies: vec![Reply::Raw(raw)],
            next: Next::Transmit(session),
        }
    }

    fn session(&self, exports: &[ExportInfo], i: usize) -> Session {
        Session {
            export: i,
            structured_replies: self.structured_replies,
            base_allocation: (self.structured_replies && self.meta_for_export == Some(i))
                .then_some(BASE_ALLOCATION_ID),
            transmission_flags: transmission_flags(&exports[i], self.structured_replies),
        }
    }

    fn info_or_go(&mut self, exports: &[ExportInfo], option: u32, data: &[u8]) -> Outcome {
        let req = match InfoRequest::decode(data) {
            Ok(r) => r,
            Err(OptionDataError(why)) => return Outcome::error(option, REP_ERR_INVALID, why),
        };
        let Some(i) = resolve_export(exports, &req.name) else {
            return Outcome::error(option, REP_ERR_UNKNOWN, "no such export");
        };
        let e = &exports[i];
        let session = self.session(exports, i);
        let mut infos = vec![Info::Export {
            size: e.size,
            flags: session.transmission_flags,
        }];
        if req.requests.contains(&INFO_NAME) {
            infos.push(Info::Name(e.name.clone()));
        }
        if req.requests.contains(&INFO_DESCRIPTION) && !e.description.is_empty() {
            infos.push(Info::Description(e.description.clone()));
        }
        // Sent whether or not asked: they are the defaults, and saying so costs nothing.
        infos.push(Info::BlockSize {
            min: MIN_BLOCK_SIZE,
            preferred: PREFERRED_BLOCK_SIZE,
            max: MAX_PAYLOAD,
        });
        let mut replies: Vec<Reply> = infos
            .iter()
            .map(|info| Reply::Option {
                option,
                reply_type: REP_INFO,
                payload: info.encode(),
            })
            .collect();
        replies.push(Reply::Option {
            option,
            reply_type: REP_ACK,
            payload: Vec::new(),
        });
        let next = if option == OPT_GO {
            Next::Transmit(session)
        } else {
            Next::Continue
        };
        Outcome { replies, next }
    }

    fn meta_context(&mut self, exports: &[ExportInfo], option: u32, data: &[u8]) -> Outcome {
        let set = option == OPT_SET_META_CONTEXT;
        if set {
            // A SET replaces the previous selection even when it fails.
            self.meta_for_export = None;
            if !self.structured_replies {
                return Outcome::error(
                    option,
                    REP_ERR_INVALID,
                    "negotiate structured replies first",
                );
            }
        }
        let req = match MetaContextRequest::decode(data) {
            Ok(r) => r,
            Err(OptionDataError(why)) => return Outcome::error(option, REP_ERR_INVALID, why),
        };
        let Some(i) = resolve_export(exports, &req.name) else {
            return Outcome::error(option, REP_ERR_UNKNOWN, "no such export");
        };
        if req.queries.iter().any(|q| !q.contains(':')) {
            return Outcome::error(option, REP_ERR_INVALID, "a query lacks its namespace");
        }
        let matches = |q: &str| q == BASE_ALLOCATION || (!set && q == "base:");
        let selected = if req.queries.is_empty() {
            !set
        } else {
            req.queries.iter().any(|q| matches(q))
        };
        let mut replies = Vec::new();
        if selected {
            let id = if set { BASE_ALLOCATION_ID } else { 0 };
            replies.push(Reply::Option {
                option,
                reply_type: REP_META_CONTEXT,
                payload: encode_rep_meta_context(id, BASE_ALLOCATION),
            });
            if set {
                self.meta_for_export = Some(i);
            }
        }
        replies.push(Reply::Option {
            option,
            reply_type: REP_ACK,
            payload: Vec::new(),
        });
        Outcome {
            replies,
            next: Next::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::nbd::options::{decode_rep_meta_context, decode_rep_server};

    fn exports() -> Vec<ExportInfo> {
        vec![
            ExportInfo {
                name: "a".into(),
                description: "disk a".into(),
                size: 1 << 20,
                read_only: false,
                multi_conn: true,
            },
            ExportInfo {
                name: "b".into(),
                description: String::new(),
                size: 4096,
                read_only: true,
                multi_conn: false,
            },
        ]
    }

    fn one() -> Vec<ExportInfo> {
        exports()[..1].to_vec()
    }

    fn go(name: &str, infos: &[u16]) -> Vec<u8> {
        InfoRequest {
            name: name.into(),
            requests: infos.to_vec(),
        }
        .encode()
    }

    fn types(o: &Outcome) -> Vec<u32> {
        o.replies
            .iter()
            .map(|r| match r {
                Reply::Option { reply_type, .. } => *reply_type,
                Reply::Raw(_) => 0,
            })
            .collect()
    }

    fn payloads(o: &Outcome) -> Vec<Vec<u8>> {
        o.replies
            .iter()
            .map(|r| match r {
                Reply::Option { payload, .. } | Reply::Raw(payload) => payload.clone(),
            })
            .collect()
    }

    #[test]
    fn unknown_client_flags_close() {
        assert!(Negotiation::new(4).is_err());
        assert!(Negotiation::new(3).is_ok());
        assert!(Negotiation::new(0).is_ok());
    }

    #[test]
    fn go_with_default_name_selects_the_single_export() {
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(&one(), OPT_GO, &go("", &[INFO_BLOCK_SIZE]));
        assert_eq!(types(&o), [REP_INFO, REP_INFO, REP_ACK]);
        let p = payloads(&o);
        let expect_flags = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_CAN_MULTI_CONN;
        assert_eq!(
            Info::decode(&p[0]).unwrap(),
            Info::Export {
                size: 1 << 20,
                flags: expect_flags
            }
        );
        assert_eq!(
            Info::decode(&p[1]).unwrap(),
            Info::BlockSize {
                min: 1,
                preferred: 4096,
                max: 32 << 20
            }
        );
        assert_eq!(
            o.next,
            Next::Transmit(Session {
                export: 0,
                structured_replies: false,
                base_allocation: None,
                transmission_flags: expect_flags
            })
        );
    }

    #[test]
    fn default_name_is_unknown_with_several_exports() {
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(&exports(), OPT_GO, &go("", &[]));
        assert_eq!(types(&o), [REP_ERR_UNKNOWN]);
        assert_eq!(o.next, Next::Continue);
        let o = n.on_option(
            &exports(),
            OPT_INFO,
            &go("b", &[INFO_NAME, INFO_DESCRIPTION]),
        );
        // No description for b: it is empty.
        assert_eq!(types(&o), [REP_INFO, REP_INFO, REP_INFO, REP_ACK]);
        assert_eq!(
            Info::decode(&payloads(&o)[1]).unwrap(),
            Info::Name("b".into())
        );
        assert_eq!(o.next, Next::Continue);
        let Info::Export { flags, .. } = Info::decode(&payloads(&o)[0]).unwrap() else {
            panic!()
        };
        assert_eq!(flags, TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH);
    }

    #[test]
    fn malformed_go_is_invalid_not_fatal() {
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(&one(), OPT_GO, &[0, 0, 0, 50]);
        assert_eq!(types(&o), [REP_ERR_INVALID]);
        assert_eq!(o.next, Next::Continue);
    }

    #[test]
    fn export_name_enters_transmission_or_closes() {
        let mut n = Negotiation::new(1).unwrap();
        let o = n.on_option(&exports(), OPT_EXPORT_NAME, b"a");
        let Reply::Raw(raw) = &o.replies[0] else {
            panic!()
        };
        assert_eq!(raw.len(), 134, "client did not ask for NO_ZEROES");
        assert!(matches!(o.next, Next::Transmit(Session { export: 0, .. })));
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(&exports(), OPT_EXPORT_NAME, b"a");
        let Reply::Raw(raw) = &o.replies[0] else {
            panic!()
        };
        assert_eq!(raw.len(), 10);
        let o = Negotiation::new(3)
            .unwrap()
            .on_option(&exports(), OPT_EXPORT_NAME, b"zz");
        assert!(matches!(o.next, Next::Close(_)));
        assert!(o.replies.is_empty());
    }

    #[test]
    fn list_names_every_export() {
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(&exports(), OPT_LIST, &[]);
        assert_eq!(types(&o), [REP_SERVER, REP_SERVER, REP_ACK]);
        assert_eq!(
            decode_rep_server(&payloads(&o)[0]).unwrap(),
            ("a".into(), "disk a".into())
        );
        let o = n.on_option(&exports(), OPT_LIST, &[1]);
        assert_eq!(types(&o), [REP_ERR_INVALID]);
    }

    #[test]
    fn unsupported_options_get_unsup() {
        let mut n = Negotiation::new(3).unwrap();
        for opt in [
            OPT_STARTTLS,
            OPT_EXTENDED_HEADERS,
            OPT_PEEK_EXPORT,
            12,
            0,
            0xffff_ffff,
        ] {
            let o = n.on_option(&one(), opt, &[]);
            assert_eq!(types(&o), [REP_ERR_UNSUP], "option {opt}");
            assert_eq!(o.next, Next::Continue);
        }
    }

    #[test]
    fn abort_acks_then_closes() {
        let o = Negotiation::new(3)
            .unwrap()
            .on_option(&one(), OPT_ABORT, b"ignored");
        assert_eq!(types(&o), [REP_ACK]);
        assert!(matches!(o.next, Next::Close(_)));
    }

    #[test]
    fn oversized_options_are_too_big() {
        let mut n = Negotiation::new(3).unwrap();
        assert_eq!(
            types(&n.on_oversized_option(OPT_GO, 1 << 20)),
            [REP_ERR_TOO_BIG]
        );
        assert!(matches!(
            n.on_oversized_option(OPT_EXPORT_NAME, 1 << 20).next,
            Next::Close(_)
        ));
    }

    #[test]
    fn option_count_is_bounded() {
        let mut n = Negotiation::new(3).unwrap();
        for _ in 0..MAX_OPTIONS {
            assert_eq!(
                n.on_option(&one(), OPT_STRUCTURED_REPLY, &[]).next,
                Next::Continue
            );
        }
        assert!(matches!(
            n.on_option(&one(), OPT_STRUCTURED_REPLY, &[]).next,
            Next::Close(_)
        ));
    }

    #[test]
    fn meta_context_requires_structured_replies_and_follows_the_export() {
        let set = |name: &str, qs: &[&str]| {
            MetaContextRequest {
                name: name.into(),
                queries: qs.iter().map(|q| q.to_string()).collect(),
            }
            .encode()
        };
        let mut n = Negotiation::new(3).unwrap();
        let o = n.on_option(
            &exports(),
            OPT_SET_META_CONTEXT,
            &set("a", &[BASE_ALLOCATION]),
        );
        assert_eq!(types(&o), [REP_ERR_INVALID]);

        assert_eq!(
            types(&n.on_option(&exports(), OPT_STRUCTURED_REPLY, &[])),
            [REP_ACK]
        );
        let o = n.on_option(
            &exports(),
            OPT_SET_META_CONTEXT,
            &set("a", &["qemu:dirty-bitmap:x", BASE_ALLOCATION]),
        );
        assert_eq!(types(&o), [REP_META_CONTEXT, REP_ACK]);
        assert_eq!(
            decode_rep_meta_context(&payloads(&o)[0]).unwrap(),
            (BASE_ALLOCATION_ID, BASE_ALLOCATION.into())
        );

        // GO to another export: the context does not follow.
        let mut other = n.clone();
        let Next::Transmit(s) = other.on_option(&exports(), OPT_GO, &go("b", &[])).next else {
            panic!()
        };
        assert_eq!(s.base_allocation, None);
        assert!(s.structured_replies);
        assert_ne!(s.transmission_flags & TFLAG_SEND_DF, 0);

        let Next::Transmit(s) = n.on_option(&exports(), OPT_GO, &go("a", &[])).next else {
            panic!()
        };
        assert_eq!(s.base_allocation, Some(BASE_ALLOCATION_ID));
    }

    #[test]
    fn failed_set_clears_the_selection() {
        let mut n = Negotiation::new(3).unwrap();
        n.on_option(&one(), OPT_STRUCTURED_REPLY, &[]);
        let good = MetaContextRequest {
            name: "a".into(),
            queries: vec![BASE_ALLOCATION.into()],
        }
        .encode();
        n.on_option(&one(), OPT_SET_META_CONTEXT, &good);
        assert_eq!(
            types(&n.on_option(&one(), OPT_SET_META_CONTEXT, &[1, 2])),
            [REP_ERR_INVALID]
        );
        let Next::Transmit(s) = n.on_option(&one(), OPT_GO, &go("a", &[])).next else {
            panic!()
        };
        assert_eq!(s.base_allocation, None);
    }

    #[test]
    fn list_meta_context_wildcards() {
        let mut n = Negotiation::new(3).unwrap();
        let list = |qs: &[&str]| {
            MetaContextRequest {
                name: String::new(),
                queries: qs.iter().map(|q| q.to_string()).collect(),
            }
            .encode()
        };
        assert_eq!(
            types(&n.on_option(&one(), OPT_LIST_META_CONTEXT, &list(&[]))),
            [REP_META_CONTEXT, REP_ACK]
        );
        assert_eq!(
            types(&n.on_option(&one(), OPT_LIST_META_CONTEXT, &list(&["base:"]))),
            [REP_META_CONTEXT, REP_ACK]
        );
        assert_eq!(
            types(&n.on_option(&one(), OPT_LIST_META_CONTEXT, &list(&["x-foo:bar"]))),
            [REP_ACK]
        );
        assert_eq!(
            types(&n.on_option(&one(), OPT_LIST_META_CONTEXT, &list(&["nocolon"]))),
            [REP_ERR_INVALID]
        );
        // SET with the wildcard selects nothing.
        n.on_option(&one(), OPT_STRUCTURED_REPLY, &[]);
        assert_eq!(
            types(&n.on_option(&one(), OPT_SET_META_CONTEXT, &list(&["base:"]))),
            [REP_ACK]
        );
    }
}
