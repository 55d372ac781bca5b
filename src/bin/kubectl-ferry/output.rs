//! `-o json|yaml`: objects printed as kubectl prints them (without `managedFields`).

use serde::Serialize;
use serde_json::{Value, json};

/// An output format for objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Json,
    Yaml,
}

fn without_managed_fields(obj: &impl Serialize) -> Result<Value, String> {
    let mut v = serde_json::to_value(obj).map_err(|e| format!("cannot encode the object: {e}"))?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    Ok(v)
}

/// The text of `value` in `format`.
fn render(value: &Value, format: Output) -> Result<String, String> {
    match format {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| format!("cannot encode JSON: {e}")),
        Output::Yaml => {
            serde_yaml::to_string(value).map_err(|e| format!("cannot encode YAML: {e}"))
        }
    }
}

/// The text of one object.
pub fn object(obj: &impl Serialize, format: Output) -> Result<String, String> {
    render(&without_managed_fields(obj)?, format)
}

/// The text of several objects, as a `v1` `List` (what `kubectl get -o` prints for many).
pub fn list<T: Serialize>(items: &[T], format: Output) -> Result<String, String> {
    let items = items
        .iter()
        .map(without_managed_fields)
        .collect::<Result<Vec<_>, _>>()?;
    render(
        &json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
        format,
    )
}

/// Print one object.
pub fn print(obj: &impl Serialize, format: Output) -> Result<(), String> {
    print!("{}", object(obj, format)?);
    Ok(())
}

/// Print several objects as a `List`.
pub fn print_list<T: Serialize>(items: &[T], format: Output) -> Result<(), String> {
    print!("{}", list(items, format)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pool, running, vm};

    #[test]
    fn objects_round_trip_without_managed_fields() {
        let mut v = vm(None, json!({}), running());
        v.metadata.managed_fields = Some(vec![Default::default()]);
        for format in [Output::Json, Output::Yaml] {
            let text = object(&v, format).expect("renders");
            let back: Value = serde_yaml::from_str(&text).expect("parses");
            assert_eq!(back["kind"], "VirtualMachine");
            assert_eq!(back["metadata"]["name"], "web-1");
            assert_eq!(back["status"]["host"], "hv-1");
            assert!(back["metadata"].get("managedFields").is_none(), "{text}");
        }
        assert!(object(&v, Output::Json).expect("json").starts_with("{\n"));
    }

    #[test]
    fn several_objects_are_a_list() {
        let pools = [pool(json!({})), pool(json!({}))];
        let back: Value =
            serde_yaml::from_str(&list(&pools, Output::Yaml).expect("renders")).expect("parses");
        assert_eq!(back["kind"], "List");
        assert_eq!(back["items"].as_array().map(Vec::len), Some(2));
        assert_eq!(back["items"][0]["kind"], "HostPool");
    }
}
