//! Data (plan §3.1, §4): one module per table, laid out as in the plan. Every function here that
//! touches a tenant table takes the [`crate::repo::TenantTx`] only
//! [`crate::repo::Repo::tenant_tx`] makes, so it runs inside a transaction whose tenant context
//! row-level security enforces; the type system refuses a system transaction or a bare
//! connection. Functions over infrastructure tables (`health_checks`) take a
//! [`crate::repo::SystemTx`]. Workers and controllers reach tables only through here.

pub mod schema;
pub mod text_enum;

/// S1–S5 operational data.
pub mod vsm {
    pub mod episode;
    pub mod policy;
    pub mod system_state;
}

/// Tenancy and stored-artifact metadata.
pub mod storage {
    pub mod api_key;
    pub mod artifact;
    pub mod tenant;
}

/// Background task history and health measurements.
pub mod jobs {
    pub mod health_check;
    pub mod task_log;
}

/// Telegram chats linked to tenants, and the dedupe of inbound updates.
pub mod telegram {
    pub mod chat;
    pub mod update;
}

/// Outgoing messages: the delivery log and its attempts.
pub mod notify {
    pub mod notification;
}

/// Checks that a JSON value can be stored in a `jsonb` column and read back: PostgreSQL refuses
/// the NUL character in strings and keys, and writes numbers as exact decimals, so a float near
/// the f64 limit comes back as a 300-digit integer that JSON parsers reject. Callers map the
/// error to 422 on the field they validated.
pub fn check_jsonb(value: &serde_json::Value) -> Result<(), &'static str> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Err("must not contain the NUL character"),
        Value::Number(n) if n.as_f64().is_some_and(|f| f.abs() > 1e300) => {
            Err("numbers must be between -1e300 and 1e300")
        }
        Value::Array(items) => items.iter().try_for_each(check_jsonb),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            if k.contains('\0') {
                Err("must not contain the NUL character")
            } else {
                check_jsonb(v)
            }
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn jsonb_storable_values() {
        assert!(super::check_jsonb(&json!({"a": [1, 2.5, "x", null, {"b": true}]})).is_ok());
        assert!(super::check_jsonb(&json!({"a": "nul\u{0}"})).is_err());
        assert!(super::check_jsonb(&json!({"k\u{0}": 1})).is_err());
        assert!(super::check_jsonb(&json!([1.7976931348623157e308])).is_err());
        assert!(super::check_jsonb(&json!([-1e301])).is_err());
    }
}
