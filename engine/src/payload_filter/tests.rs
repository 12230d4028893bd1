use proptest::prelude::*;
use serde_json::json;

use super::*;

fn event() -> serde_json::Value {
    json!({
        "id": "evt_1",
        "type": "inventory.adjusted",
        "tenant_id": "acme",
        "source": {"kind": "api"},
        "data": {"warehouse": "EU-2", "quantity": 150, "price": 2.5, "sku": "A-1", "tags": ["x", "y"]}
    })
}

#[test]
fn expressions_match_like_the_table_says() {
    let vars = FilterVars::of_envelope(&event());
    let small = FilterVars::of_envelope(&json!({
        "type": "order.created",
        "data": {"warehouse": "EU-2", "quantity": 3, "tags": []}
    }));
    let table: &[(&str, bool, bool)] = &[
        (
            r#"data.warehouse == "EU-2" && data.quantity > 100"#,
            true,
            false,
        ),
        (r#"type.startsWith("inventory.")"#, true, false),
        (r#"event_type.startsWith("inventory.")"#, true, false),
        (r#"event.type == "order.created""#, false, true),
        (r#""x" in data.tags"#, true, false),
        ("has(data.sku)", true, false),
        ("data.price < 3.0", true, false),
        (r#"tenant_id == "acme""#, true, false),
        (r#"id == "evt_1" && source.kind == "api""#, true, false),
        ("data.quantity <= 3", false, true),
        ("size(data.tags) == 0", false, true),
        ("true", true, true),
    ];
    for (expr, big, little) in table {
        let f = PayloadFilter::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        assert_eq!(f.evaluate(&vars), Ok(*big), "{expr} on the first event");
        assert_eq!(f.matches(&small), *little, "{expr} on the second event");
    }
}

#[test]
fn evaluation_errors_are_no_match() {
    let vars = FilterVars::of_envelope(&event());
    for expr in [
        "data.missing == 1",
        r#"data.quantity == "a" + 1"#,
        "data.sku",
        "nope > 1",
    ] {
        let f = PayloadFilter::compile(expr).unwrap();
        assert!(f.evaluate(&vars).is_err(), "{expr}");
        assert!(!f.matches(&vars), "{expr}");
    }
}

#[test]
fn limits_and_syntax_are_checked() {
    assert_eq!(
        PayloadFilter::compile("  ").unwrap_err(),
        FilterError::Empty
    );
    let long = format!("{} == 1", "a".repeat(MAX_FILTER_BYTES));
    assert!(matches!(
        PayloadFilter::compile(&long),
        Err(FilterError::TooLong(_))
    ));
    let deep = format!("{}1{}", "(".repeat(9), ")".repeat(9));
    assert_eq!(
        PayloadFilter::compile(&deep).unwrap_err(),
        FilterError::TooDeep
    );
    let ok = format!("{}1{} == 1", "(".repeat(8), ")".repeat(8));
    assert!(PayloadFilter::compile(&ok).is_ok());
    assert!(matches!(
        PayloadFilter::compile("data.quantity >"),
        Err(FilterError::Syntax(_))
    ));
    assert!(matches!(
        PayloadFilter::compile("a = = b"),
        Err(FilterError::Syntax(_))
    ));
}

#[test]
fn long_operator_chains_do_not_overflow_the_stack() {
    let vars = FilterVars::of_envelope(&event());
    for unit in ["!", "-", "1 + ", "true && ", "data.a."] {
        let ops = unit
            .bytes()
            .filter(|b| b"!-+*/%&|<>=?.".contains(b))
            .count();
        let at_limit = format!("{}1", unit.repeat(MAX_FILTER_OPERATORS / ops));
        if let Ok(f) = PayloadFilter::compile(&at_limit) {
            let _ = f.matches(&vars);
        }
        let over = format!("{}1", unit.repeat(MAX_FILTER_BYTES / 2 / unit.len()));
        assert_eq!(
            PayloadFilter::compile(&over).unwrap_err(),
            FilterError::TooManyOperators
        );
    }
}

#[test]
fn operators_inside_string_literals_are_not_counted() {
    let dashes = "-".repeat(MAX_FILTER_OPERATORS * 2);
    for literal in [
        format!(r#""{dashes}""#),
        format!("'{dashes}'"),
        format!(r#""""{dashes}""""#),
        format!(r#"r"\{dashes}""#),
        format!(r#""a\"{dashes}""#),
    ] {
        let source = format!("data.sku == {literal}");
        assert_eq!(operators_outside_strings(&source), 3, "{source}");
        assert!(PayloadFilter::compile(&source).is_ok(), "{source}");
    }
    // Operators after a literal still count, escapes and all.
    let after = format!(r#"data.sku == "a\"" || {}1"#, "1 + ".repeat(40));
    assert_eq!(
        PayloadFilter::compile(&after).unwrap_err(),
        FilterError::TooManyOperators
    );
    let vars = FilterVars::of_envelope(&json!({"type": "t", "data": {"sku": "EU-2.x"}}));
    let f = PayloadFilter::compile(r#"data.sku == "EU-2.x""#).unwrap();
    assert_eq!(f.evaluate(&vars), Ok(true));
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "[a-z0-9.-]{0,8}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn evaluation_never_panics_on_any_data(data in arb_json()) {
        let vars = FilterVars::of_envelope(&json!({"type": "t.x", "data": data}));
        for expr in [
            r#"data.warehouse == "EU-2" && data.quantity > 100"#,
            r#""x" in data.tags"#,
            "has(data.sku)",
            "data.a.b + 1 > data.c",
            "size(data) > 2 || data.a[0] == data.b",
            "data.a / data.b > 1",
            "data.a % 0 == 1",
            "data.a * 9223372036854775807 > 0",
        ] {
            let f = PayloadFilter::compile(expr).unwrap();
            let _ = f.matches(&vars);
        }
    }
}
