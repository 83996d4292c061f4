//! From text to [`RawTopology`]: TOML syntax (every syntax error, with recovery), then
//! the schema, one element at a time so that a single bad `[[host]]` does not hide the
//! problems of the others. Unknown keys get a "did you mean" suggestion.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::diag::{Code, Diagnostic};
use crate::raw::{RawAppFull, RawTopology};

/// The top-level keys a topology file may have.
pub const TOP_LEVEL_KEYS: &[&str] = &[
    "cluster",
    "timing",
    "site",
    "orchestrator",
    "host",
    "app",
    "drill",
];

/// Parse TOML text into the raw model, collecting every syntax and schema problem.
pub fn parse(src: &str) -> (RawTopology, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut raw = RawTopology {
        complete: true,
        ..RawTopology::default()
    };
    let (root, errors) = DeTable::parse_recoverable(src);
    if !errors.is_empty() {
        for e in errors {
            diags.push(
                Diagnostic::error(Code::Syntax, e.span(), first_line(e.message()))
                    .with_hint("fix the TOML syntax here; see https://toml.io for the format"),
            );
        }
        // After a syntax error the recovered document is partial; checking its meaning
        // would only add confusing follow-on errors.
        raw.complete = false;
        return (raw, diags);
    }

    let root = root.into_inner();
    for (key, value) in root {
        let key_span = key.span();
        match key.get_ref().as_ref() {
            "cluster" => {
                let span = value.span();
                if let Some(c) = de_element(value, "[cluster]", &mut raw, &mut diags) {
                    raw.cluster = Some((span, c));
                }
            }
            "timing" => {
                let span = value.span();
                if let Some(t) = de_element(value, "[timing]", &mut raw, &mut diags) {
                    raw.timing = Some((span, t));
                }
            }
            "site" => {
                let values = elements(value, "[[site]]", &mut raw, &mut diags);
                raw.sites = de_all(values, "[[site]]", &mut raw, &mut diags);
            }
            "orchestrator" => {
                let values = elements(value, "[[orchestrator]]", &mut raw, &mut diags);
                raw.nodes = de_all(values, "[[orchestrator]]", &mut raw, &mut diags);
            }
            "host" => {
                let values = elements(value, "[[host]]", &mut raw, &mut diags);
                raw.hosts = de_all(values, "[[host]]", &mut raw, &mut diags);
            }
            "drill" => {
                let values = elements(value, "[[drill]]", &mut raw, &mut diags);
                raw.drills = de_all(values, "[[drill]]", &mut raw, &mut diags);
            }
            "app" => {
                for v in elements(value, "[[app]]", &mut raw, &mut diags) {
                    if let Some(app) = de_app(v, &mut raw, &mut diags) {
                        raw.apps.push(app);
                    }
                }
            }
            other => {
                raw.complete = false;
                diags.push(unknown_key(
                    other,
                    key_span,
                    TOP_LEVEL_KEYS,
                    "at the top level",
                ));
            }
        }
    }
    // Keep file order (the TOML table is keyed by name, arrays keep their order).
    raw.sites.sort_by_key(|(s, _)| s.start);
    raw.nodes.sort_by_key(|(s, _)| s.start);
    raw.hosts.sort_by_key(|(s, _)| s.start);
    raw.apps.sort_by_key(|a| a.span.start);
    raw.drills.sort_by_key(|(s, _)| s.start);
    (raw, diags)
}

/// The elements of an array of tables; anything else is reported.
fn elements<'i>(
    value: Spanned<DeValue<'i>>,
    section: &'static str,
    raw: &mut RawTopology,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Spanned<DeValue<'i>>> {
    let span = value.span();
    match value.into_inner() {
        DeValue::Array(items) => items.into_iter().collect(),
        other => {
            raw.complete = false;
            raw.broken_sections.insert(section);
            let key = section.trim_matches(['[', ']']);
            diags.push(
                Diagnostic::error(
                    Code::BadValue,
                    Some(span),
                    format!(
                        "`{key}` must be a list of tables, not a {}",
                        other.type_str()
                    ),
                )
                .with_hint(format!(
                    "write each one under its own `{section}` header (two brackets)"
                )),
            );
            Vec::new()
        }
    }
}

fn de_element<'i, T: Deserialize<'i>>(
    value: Spanned<DeValue<'i>>,
    what: &'static str,
    raw: &mut RawTopology,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let span = value.span();
    let id = match value.get_ref() {
        DeValue::Table(t) => t
            .get("id")
            .and_then(|v| v.get_ref().as_str())
            .map(str::to_string),
        _ => None,
    };
    match T::deserialize(ValueDeserializer::from(value)) {
        Ok(t) => Some(t),
        Err(e) => {
            raw.complete = false;
            raw.broken_sections.insert(what);
            if let Some(id) = &id {
                raw.broken_ids.insert(id.clone());
            }
            diags.push(schema_error(&e, span, what, id.as_deref()));
            None
        }
    }
}

/// An `[[app]]`: its header and each VM, volume and probe are deserialized separately.
fn de_app(
    value: Spanned<DeValue<'_>>,
    raw: &mut RawTopology,
    diags: &mut Vec<Diagnostic>,
) -> Option<RawAppFull> {
    let span = value.span();
    let mut table: DeTable<'_> = match value.into_inner() {
        DeValue::Table(t) => t,
        other => {
            raw.complete = false;
            diags.push(
                Diagnostic::error(
                    Code::BadValue,
                    Some(span),
                    format!("each app must be a table, not a {}", other.type_str()),
                )
                .with_hint("write each app under its own `[[app]]` header"),
            );
            return None;
        }
    };
    let mut parts = |key: &str, section: &'static str| match table.remove(key) {
        Some(v) => elements(v, section, raw, diags),
        None => Vec::new(),
    };
    let vm_values = parts("vm", "[[app.vm]]");
    let volume_values = parts("volume", "[[app.volume]]");
    let probe_values = parts("probe", "[[app.probe]]");

    // The header and every part are checked even when the header is bad, so that all
    // problems of an app are reported at once.
    let header = de_element(
        Spanned::new(span.clone(), DeValue::Table(table)),
        "[[app]]",
        raw,
        diags,
    );
    let vms = de_all(vm_values, "[[app.vm]]", raw, diags);
    let volumes = de_all(volume_values, "[[app.volume]]", raw, diags);
    let probes = de_all(probe_values, "[[app.probe]]", raw, diags);
    Some(RawAppFull {
        span,
        app: header?,
        vms,
        volumes,
        probes,
    })
}

fn de_all<'i, T: Deserialize<'i>>(
    values: Vec<Spanned<DeValue<'i>>>,
    what: &'static str,
    raw: &mut RawTopology,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Range<usize>, T)> {
    values
        .into_iter()
        .filter_map(|v| {
            let s = v.span();
            de_element(v, what, raw, diags).map(|t| (s, t))
        })
        .collect()
}

/// Turn a serde/toml schema error into a diagnostic with a useful hint.
fn schema_error(
    e: &toml::de::Error,
    element: Range<usize>,
    what: &str,
    id: Option<&str>,
) -> Diagnostic {
    let msg = first_line(e.message());
    let span = e.span().unwrap_or(element);
    let in_what = match id {
        Some(id) => format!("in {what} `{id}`"),
        None => format!("in {what}"),
    };
    if let Some(field) = between(&msg, "unknown field `", "`") {
        let expected = backticked(msg.split_once("expected").map_or("", |(_, r)| r));
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        return unknown_key(field, span, &expected, &in_what);
    }
    if let Some(field) = between(&msg, "missing field `", "`") {
        return Diagnostic::error(
            Code::MissingKey,
            Some(span),
            format!("required key `{field}` is missing {in_what}"),
        )
        .with_hint(format!("add `{field} = ...` to this table"));
    }
    if let Some(variant) = between(&msg, "unknown variant `", "`") {
        let expected = backticked(msg.split_once("expected").map_or("", |(_, r)| r));
        let mut d = Diagnostic::error(
            Code::BadValue,
            Some(span),
            format!("{variant:?} is not a valid value {in_what}"),
        );
        let list = expected
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        d = match closest(variant, expected.iter().map(String::as_str)) {
            Some(best) => d.with_hint(format!("did you mean {best:?}? valid values: {list}")),
            None => d.with_hint(format!("valid values: {list}")),
        };
        return d;
    }
    if msg.starts_with("invalid value: integer") {
        let (lo, hi) = if msg.contains("u16") {
            (0, u64::from(u16::MAX))
        } else if msg.contains("u32") {
            (0, u64::from(u32::MAX))
        } else {
            (0, u64::MAX)
        };
        return Diagnostic::error(Code::OutOfRange, Some(span), format!("{msg} {in_what}"))
            .with_hint(format!("use a whole number from {lo} to {hi}"));
    }
    Diagnostic::error(Code::BadValue, Some(span), format!("{msg} {in_what}"))
        .with_hint("check the value's type: strings need quotes, numbers do not")
}

pub(crate) fn unknown_key(
    key: &str,
    span: Range<usize>,
    expected: &[&str],
    in_what: &str,
) -> Diagnostic {
    let d = Diagnostic::error(
        Code::UnknownKey,
        Some(span),
        format!("unknown key `{key}` {in_what}"),
    );
    let list = expected.join("`, `");
    match closest(key, expected.iter().copied()) {
        Some(best) => d.with_hint(format!("did you mean `{best}`? valid keys here: `{list}`")),
        None if expected.is_empty() => d,
        None => d.with_hint(format!("valid keys here: `{list}`")),
    }
}

/// The most similar candidate, if it is similar enough to be a likely typo.
pub(crate) fn closest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &s[s.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}
