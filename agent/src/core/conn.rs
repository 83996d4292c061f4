//! Which orchestrator node the agent talks to: the leader's address once a node names
//! it, else the configured addresses in turn, moving on after a failure. Pure: the
//! shell keeps the connections; this only picks the address.

/// The configured addresses and the leader hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    addrs: Vec<String>,
    current: usize,
    hint: Option<String>,
}

impl Conn {
    pub fn new(addrs: Vec<String>) -> Conn {
        Conn {
            addrs,
            current: 0,
            hint: None,
        }
    }

    /// Where the next call goes: the leader hint, else the current address (None only
    /// when no address is configured, which the config refuses).
    pub fn target(&self) -> Option<String> {
        self.hint
            .clone()
            .or_else(|| self.addrs.get(self.current).cloned())
    }

    /// The last call failed: forget the hint and move on to the next address.
    pub fn failed(&mut self) {
        self.hint = None;
        if !self.addrs.is_empty() {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    /// A node said where the leader is (empty: it did not say).
    pub fn follow(&mut self, leader: &str) {
        if !leader.is_empty() {
            self.hint = Some(leader.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_leader_and_moves_on_after_a_failure() {
        let mut c = Conn::new(vec!["a:1".into(), "b:1".into()]);
        assert_eq!(c.target().as_deref(), Some("a:1"));
        c.follow("");
        assert_eq!(c.target().as_deref(), Some("a:1"), "an empty hint is none");
        c.follow("l:1");
        assert_eq!(c.target().as_deref(), Some("l:1"));
        c.failed();
        assert_eq!(
            c.target().as_deref(),
            Some("b:1"),
            "hint forgotten, next address"
        );
        c.failed();
        assert_eq!(c.target().as_deref(), Some("a:1"), "round robin");
        assert_eq!(Conn::new(Vec::new()).target(), None);
    }
}
