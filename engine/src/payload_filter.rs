//! Payload filters: a subscription's CEL expression over the event envelope
//! (issue #22). Compiled once when the subscription enters the index,
//! evaluated per event by fan-out. CEL has no loops, so an evaluation is
//! bounded by the expression's size, which is limited before compiling.

use std::{collections::HashMap, sync::Arc};

use cel::{Context, Program, Value};

use crate::model::DomainEvent;

/// Longest accepted filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;
/// Deepest accepted nesting of `(`, `[` and `{`.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most operator characters (`!-+*/%&|<>=?.`) outside string literals: the
/// parser and evaluator recurse once per operator (in a debug build, a chain
/// of 96 `+` overflows a 2 MiB stack; 48 do not).
pub const MAX_FILTER_OPERATORS: usize = 32;

/// Why a filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Empty or only whitespace.
    #[error("the filter is empty")]
    Empty,
    /// Longer than [`MAX_FILTER_BYTES`].
    #[error("the filter is {0} bytes long, more than {MAX_FILTER_BYTES}")]
    TooLong(usize),
    /// Nested deeper than [`MAX_FILTER_DEPTH`].
    #[error("the filter nests brackets deeper than {MAX_FILTER_DEPTH}")]
    TooDeep,
    /// More than [`MAX_FILTER_OPERATORS`] operator characters.
    #[error("the filter has more than {MAX_FILTER_OPERATORS} operator characters (`!-+*/%&|<>=?.`) outside string literals")]
    TooManyOperators,
    /// Not a CEL expression.
    #[error("the filter is not a valid CEL expression: {0}")]
    Syntax(String),
}

/// A compiled filter.
pub struct PayloadFilter {
    program: Program,
}

impl std::fmt::Debug for PayloadFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PayloadFilter")
    }
}

impl PayloadFilter {
    /// Checks the limits, then compiles `source`.
    pub fn compile(source: &str) -> Result<Self, FilterError> {
        if source.trim().is_empty() {
            return Err(FilterError::Empty);
        }
        if source.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong(source.len()));
        }
        let mut depth = 0usize;
        for b in source.bytes() {
            match b {
                b'(' | b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_FILTER_DEPTH {
                        return Err(FilterError::TooDeep);
                    }
                }
                b')' | b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if operators_outside_strings(source) > MAX_FILTER_OPERATORS {
            return Err(FilterError::TooManyOperators);
        }
        // The parser is third-party code: a panic in it is a refusal, not a crash.
        let compiled = std::panic::catch_unwind(|| Program::compile(source))
            .map_err(|_| FilterError::Syntax("the expression could not be parsed".into()))?;
        let program = compiled.map_err(|e| FilterError::Syntax(e.to_string()))?;
        Ok(Self { program })
    }

    /// Whether the event the variables describe matches: an evaluation error
    /// (a missing field, a type mismatch) or a non-boolean result is `Err`,
    /// which fan-out counts as no match.
    pub fn evaluate(&self, vars: &FilterVars) -> Result<bool, String> {
        let run = std::panic::AssertUnwindSafe(|| self.program.execute(&vars.context));
        match std::panic::catch_unwind(run) {
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("the filter gave {other:?}, not a boolean")),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the evaluation panicked".into()),
        }
    }

    /// [`PayloadFilter::evaluate`] with errors as no match, logged at debug.
    pub fn matches(&self, vars: &FilterVars) -> bool {
        self.evaluate(vars).unwrap_or_else(|e| {
            tracing::debug!(error = %e, "payload filter evaluation failed: no match");
            false
        })
    }
}

/// The operator characters of `source` outside its string literals (`"…"`,
/// `'…'`, triple-quoted, raw `r"…"`), so `"EU-2"` or `"inventory."` cost
/// nothing. An unterminated literal ends the count: the parser refuses it.
fn operators_outside_strings(source: &str) -> usize {
    let b = source.as_bytes();
    let (mut i, mut count) = (0, 0);
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' {
            let raw = i > 0 && matches!(b[i - 1], b'r' | b'R');
            let triple = b[i..].starts_with(&[c, c, c]);
            let close: &[u8] = if triple { &b[i..i + 3] } else { &b[i..=i] };
            i += close.len();
            loop {
                match b.get(i) {
                    None => return count,
                    Some(b'\\') if !raw => i += 2,
                    Some(_) if b[i..].starts_with(close) => {
                        i += close.len();
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
            continue;
        }
        if b"!-+*/%&|<>=?.".contains(&c) {
            count += 1;
        }
        i += 1;
    }
    count
}

/// The variables a filter sees, built once per event: the envelope's fields
/// `id`, `type` (also `event_type`), `tenant_id`, `data`, `source`,
/// `occurred_at`, `received_at` and more, and the whole envelope as `event`.
pub struct FilterVars {
    context: Context<'static>,
}

impl FilterVars {
    /// The variables of a stored event.
    pub fn of_event(e: &DomainEvent) -> Self {
        let mut env = serde_json::to_value(e.envelope()).unwrap_or_default();
        if let serde_json::Value::Object(m) = &mut env {
            let received = time::format_description::well_known::Rfc3339;
            if let Ok(r) = e.received_at.format(&received) {
                m.insert("received_at".into(), r.into());
            }
            if let Ok(s) = serde_json::to_value(e.source) {
                m.insert("source".into(), s);
            }
        }
        Self::of_envelope(&env)
    }

    /// The variables of an envelope given as JSON (`type`, `data` and any
    /// other fields); a missing field is simply not bound.
    pub fn of_envelope(envelope: &serde_json::Value) -> Self {
        let mut context = Context::default();
        if let serde_json::Value::Object(m) = envelope {
            for (k, v) in m {
                context.add_variable_from_value(k.clone(), to_cel(v));
            }
            if let Some(t) = m.get("type") {
                context.add_variable_from_value("event_type", to_cel(t));
            }
        }
        context.add_variable_from_value("event", to_cel(envelope));
        Self { context }
    }
}

/// JSON as a CEL value: integers as `int` (or `uint` beyond it), other numbers as `double`.
fn to_cel(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(Arc::new(s.clone())),
        serde_json::Value::Array(a) => Value::List(Arc::new(a.iter().map(to_cel).collect())),
        serde_json::Value::Object(m) => {
            let map: HashMap<String, Value> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Value::from(map)
        }
    }
}

#[cfg(test)]
mod tests;
