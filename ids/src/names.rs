//! The names of things: identifier newtypes for the model, and sizes.
//!
//! Every id in the model has its own type so that a `HostId` can never be passed where a
//! `SiteId` is expected. Ids are also used as libvirt domain names, file names and
//! network-namespace suffixes, hence the conservative character set ([`check_id`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wrap a string that has already passed [`check_id`].
            pub fn new(s: impl Into<String>) -> Self {
                $name(s.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A site: one of the two production data centers or the witness.
    SiteId
);
id_type!(
    /// A hypervisor host.
    HostId
);
id_type!(
    /// An application: a set of VMs and volumes that fail over together.
    AppId
);
id_type!(
    /// A virtual machine (also its libvirt domain name).
    VmId
);
id_type!(
    /// A replicated volume (one VM disk).
    VolumeId
);
id_type!(
    /// An orchestrator (Raft) node.
    NodeId
);

/// Longest id accepted; libvirt and Linux interface names need short names.
pub const ID_MAX_LEN: usize = 63;

/// Check an id: 1–63 characters from `a-z 0-9 - _ .`, starting with a letter or digit.
/// Returns a human explanation when the id is not acceptable.
pub fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("an id must not be empty".into());
    }
    if s.len() > ID_MAX_LEN {
        return Err(format!(
            "id is {} characters long; at most {ID_MAX_LEN} are allowed",
            s.len()
        ));
    }
    let first_ok = s
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok {
        return Err("an id must start with a lowercase letter or a digit".into());
    }
    if let Some(bad) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {bad:?} is not allowed in an id (use lowercase letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
}

/// A size in bytes, written in files with a binary unit: `"64MiB"`, `"500GiB"`, `"2T"`.
/// Serialized the same way (its exact `Display` form), so it round-trips everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

pub const KIB: u64 = 1 << 10;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
pub const TIB: u64 = 1 << 40;

impl ByteSize {
    pub const fn bytes(self) -> u64 {
        self.0
    }
    pub const fn mib(mib: u64) -> Self {
        ByteSize(mib * MIB)
    }
    pub const fn gib(gib: u64) -> Self {
        ByteSize(gib * GIB)
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == '-' || c == '+'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let unit = unit.trim();
        if num.is_empty() {
            return Err(format!(
                "{s:?} has no number; write a size like \"64MiB\" or \"500GiB\""
            ));
        }
        let digits: String = num.chars().filter(|&c| c != '_').collect();
        let n: i128 = digits
            .parse()
            .map_err(|_| format!("{num:?} is not a whole number"))?;
        if n < 0 {
            return Err(format!("size {s:?} is negative; sizes must be positive"));
        }
        let mult: u64 = match unit {
            "" => {
                return Err(format!(
                    "size {s:?} has no unit; write e.g. \"{n}MiB\" or \"{n}GiB\" (binary units)"
                ));
            }
            "B" => 1,
            "K" | "KiB" => KIB,
            "M" | "MiB" => MIB,
            "G" | "GiB" => GIB,
            "T" | "TiB" => TIB,
            "KB" | "kB" | "MB" | "GB" | "TB" => {
                return Err(format!(
                    "unit {unit:?} is decimal and ambiguous; metrodr uses binary units: write {n}{}",
                    match unit {
                        "KB" | "kB" => "KiB",
                        "MB" => "MiB",
                        "GB" => "GiB",
                        _ => "TiB",
                    }
                ));
            }
            other => {
                return Err(format!(
                    "unknown size unit {other:?}; use B, KiB, MiB, GiB or TiB"
                ));
            }
        };
        u64::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .map(ByteSize)
            .ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides the size exactly (so it round-trips).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (unit, m) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
            if b >= m && b.is_multiple_of(m) {
                return write!(f, "{}{unit}", b / m);
            }
        }
        write!(f, "{b}B")
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size with a binary unit, e.g. \"64MiB\" or \"500GiB\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "sizes are strings with a unit: write \"{v}MiB\" or \"{v}GiB\", not a bare number"
                )))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Err(E::custom(format!(
                    "sizes are strings with a unit: write \"{v}MiB\" or \"{v}GiB\", not a bare number"
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// Human-readable size with one decimal (for tables): `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    for (unit, m) in [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= m {
            let v = b / m as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_only() {
        assert_eq!("64MiB".parse(), Ok(ByteSize(64 * MIB)));
        assert_eq!("64M".parse(), Ok(ByteSize(64 * MIB)));
        assert_eq!("1_024 GiB".parse(), Ok(ByteSize(1024 * GIB)));
        assert_eq!("0GiB".parse(), Ok(ByteSize(0)));
        assert!("64GB".parse::<ByteSize>().unwrap_err().contains("64GiB"));
        assert!(
            "-5GiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("negative")
        );
        assert!("64".parse::<ByteSize>().unwrap_err().contains("no unit"));
        assert!("GiB".parse::<ByteSize>().unwrap_err().contains("no number"));
        assert!(
            "99999999999TiB"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            "5 parsecs"
                .parse::<ByteSize>()
                .unwrap_err()
                .contains("unknown size unit")
        );
    }

    #[test]
    fn sizes_round_trip_through_display() {
        for s in ["1B", "3KiB", "64MiB", "1536MiB", "500GiB", "2TiB"] {
            let b: ByteSize = s.parse().unwrap();
            assert_eq!(b.to_string(), s);
        }
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("east-h1").is_ok());
        assert!(check_id("db.primary_2").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("East").is_err());
        assert!(check_id("-x").is_err());
        assert!(check_id("a b").unwrap_err().contains("' '"));
        assert!(check_id(&"a".repeat(64)).is_err());
    }
}
