//! The eight voice slots as plugin state: which file each slot should hold, what went wrong when a
//! saved state could not be taken as it was, and forwarding of requests to the runtime's
//! controller.
//!
//! Saved state is untrusted input. [`SavedSlots`] deserialises from any JSON value: garbled or
//! unknown content never fails, it yields empty slots and a message for each affected slot.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nice_plug::params::persist::PersistentField;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::engine::{ControlHandle, LoadState};
use crate::params::SLOTS;

/// Key of the slot field in the plugin state.
pub const FIELD_KEY: &str = "slots";
/// Version written into saved slot state.
pub const STATE_VERSION: u64 = 1;
/// Longest path accepted from a saved state, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Slot paths as stored in the plugin state, plus (not stored) what was wrong with the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedSlots {
    /// Path per slot, `None` for an empty slot.
    pub paths: [Option<String>; SLOTS],
    /// Why a slot was reset while reading a saved state.
    pub messages: [Option<String>; SLOTS],
}

impl Serialize for SavedSlots {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json!({ "version": STATE_VERSION, "slots": self.paths }).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SavedSlots {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Only a syntactically broken document can fail here, and `sanitize_field` replaces
        // those before nice-plug gets to them.
        let value = Value::deserialize(deserializer)?;
        Ok(SavedSlots::from_value(&value))
    }
}

impl SavedSlots {
    /// Interprets any JSON value as slot state, never failing.
    pub fn from_value(value: &Value) -> Self {
        let mut out = SavedSlots::default();
        let entries = match value {
            Value::Object(map) => {
                if let Some(reason) = map.get("unreadable") {
                    let reason = reason.as_str().unwrap_or("not JSON");
                    out.reset_all(&format!("saved slot state was unreadable ({reason})"));
                    return out;
                }
                match map.get("slots") {
                    Some(Value::Array(entries)) => entries,
                    Some(_) => {
                        out.reset_all("saved slot list has the wrong shape");
                        return out;
                    }
                    None => return out,
                }
            }
            // Accept a bare list of paths too.
            Value::Array(entries) => entries,
            Value::Null => return out,
            _ => {
                out.reset_all("saved slot state has the wrong shape");
                return out;
            }
        };

        for (slot, entry) in entries.iter().enumerate() {
            if slot >= SLOTS {
                if !entry.is_null() {
                    let last = &mut out.messages[SLOTS - 1];
                    if last.is_none() {
                        *last = Some(format!(
                            "saved state names more than {SLOTS} slots; the extra ones were ignored"
                        ));
                    }
                }
                continue;
            }
            match entry {
                Value::Null => {}
                Value::String(path) => match check_path(path) {
                    Ok(()) => out.paths[slot] = Some(path.clone()),
                    Err(why) => out.messages[slot] = Some(why),
                },
                _ => {
                    out.messages[slot] =
                        Some("saved entry is not a file path; slot left empty".to_string())
                }
            }
        }
        out
    }

    fn reset_all(&mut self, why: &str) {
        for message in &mut self.messages {
            *message = Some(format!("{why}; slot left empty"));
        }
    }
}

/// Whether `path` is acceptable as a slot path (absolute, bounded, no NUL).
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("saved path is empty; slot left empty".to_string());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "saved path is {} bytes long (limit {MAX_PATH_BYTES}); slot left empty",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err("saved path contains a NUL byte; slot left empty".to_string());
    }
    if !Path::new(path).is_absolute() {
        return Err(format!(
            "saved path \"{}\" is not absolute; slot left empty",
            path.escape_debug()
        ));
    }
    Ok(())
}

/// Called from `Plugin::filter_state` before nice-plug applies a state: a slot field that is not
/// JSON becomes a marker [`SavedSlots::from_value`] reports per slot, and a state without the field
/// restores empty slots instead of keeping whatever the instance had.
pub fn sanitize_field(fields: &mut BTreeMap<String, String>) {
    match fields.get_mut(FIELD_KEY) {
        Some(text) => {
            if let Err(err) = serde_json::from_str::<Value>(text) {
                *text = json!({ "unreadable": err.to_string() }).to_string();
            }
        }
        None => {
            fields.insert(
                FIELD_KEY.to_string(),
                json!({ "version": STATE_VERSION, "slots": [] }).to_string(),
            );
        }
    }
}

#[derive(Default)]
struct Inner {
    /// What the user (or a restored state) asked each slot to hold.
    paths: [Option<String>; SLOTS],
    /// Messages from restoring a state or from a refused path.
    messages: [Option<String>; SLOTS],
    /// The runtime's control side, once the plugin is activated.
    control: Option<Arc<ControlHandle>>,
    /// What the control side was last asked for each slot.
    sent: [Option<String>; SLOTS],
}

/// Shared slot state: persisted through nice-plug, edited by the editor, forwarded to the
/// runtime's controller. Only ever touched off the audio thread.
#[derive(Default)]
pub struct SlotStore {
    inner: Mutex<Inner>,
}

impl SlotStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Connects a (new) runtime and asks it for every slot's path.
    pub fn attach(&self, control: Arc<ControlHandle>) {
        let mut inner = self.lock();
        inner.control = Some(control);
        inner.sent = Default::default();
        sync(&mut inner);
    }

    /// The runtime's control side, if the plugin has been activated.
    pub fn control(&self) -> Option<Arc<ControlHandle>> {
        self.lock().control.clone()
    }

    /// Requests `path` in `slot` (0-based).
    pub fn set_path(&self, slot: usize, path: &Path) -> Result<(), String> {
        if slot >= SLOTS {
            return Err(format!("there is no slot {}", slot + 1));
        }
        let text = path
            .to_str()
            .ok_or_else(|| format!("path {} is not valid UTF-8", path.display()))?;
        check_path(text).map_err(|why| why.replace("saved path", "path"))?;
        let mut inner = self.lock();
        inner.paths[slot] = Some(text.to_string());
        inner.messages[slot] = None;
        sync(&mut inner);
        Ok(())
    }

    /// Empties `slot` (0-based).
    pub fn clear(&self, slot: usize) {
        if slot >= SLOTS {
            return;
        }
        let mut inner = self.lock();
        inner.paths[slot] = None;
        inner.messages[slot] = None;
        sync(&mut inner);
    }

    /// Path requested for `slot`.
    pub fn path(&self, slot: usize) -> Option<String> {
        self.lock().paths.get(slot).cloned().flatten()
    }

    /// Message left by restoring a state into `slot`.
    pub fn message(&self, slot: usize) -> Option<String> {
        self.lock().messages.get(slot).cloned().flatten()
    }

    /// The state to save: per slot the requested path, except where a request failed while an
    /// earlier index keeps serving: then the path of the serving index, so a restored project
    /// sounds like the saved one.
    pub fn saved(&self) -> SavedSlots {
        let inner = self.lock();
        let mut out = SavedSlots {
            paths: inner.paths.clone(),
            messages: Default::default(),
        };
        if let Some(control) = &inner.control {
            for (slot, path) in out.paths.iter_mut().enumerate() {
                let view = control.status(slot);
                if let (LoadState::Failed(_), Some(info)) = (&view.state, &view.info) {
                    if let Some(serving) = info.path.to_str() {
                        *path = Some(serving.to_string());
                    }
                }
            }
        }
        out
    }

    /// Applies a restored state.
    pub fn restore(&self, saved: SavedSlots) {
        let mut inner = self.lock();
        inner.paths = saved.paths;
        inner.messages = saved.messages;
        sync(&mut inner);
    }
}

/// Sends the control side whatever changed since the last call.
fn sync(inner: &mut Inner) {
    let Some(control) = inner.control.clone() else {
        return;
    };
    for slot in 0..SLOTS {
        if inner.paths[slot] == inner.sent[slot] {
            continue;
        }
        match &inner.paths[slot] {
            Some(path) => control.load(slot, Path::new(path)),
            None => control.unload(slot),
        }
        inner.sent[slot] = inner.paths[slot].clone();
    }
}

impl<'a> PersistentField<'a, SavedSlots> for Arc<SlotStore> {
    fn set(&self, new_value: SavedSlots) {
        self.restore(new_value);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&SavedSlots) -> R,
    {
        f(&self.saved())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> SavedSlots {
        let mut fields = BTreeMap::new();
        fields.insert(FIELD_KEY.to_string(), text.to_string());
        sanitize_field(&mut fields);
        serde_json::from_str(&fields[FIELD_KEY]).expect("sanitised field always parses")
    }

    #[test]
    fn round_trip_is_byte_identical() {
        let mut saved = SavedSlots::default();
        saved.paths[0] = Some("/voices/a.kbi".into());
        saved.paths[7] = Some("/voices/ü b.index".into());
        let text = serde_json::to_string(&saved).unwrap();
        let back = parse(&text);
        assert_eq!(back, saved);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
    }

    #[test]
    fn garbled_json_resets_every_slot_with_a_message() {
        let back = parse("{\"slots\": [\"/a.kbi\"");
        assert!(back.paths.iter().all(Option::is_none));
        for message in &back.messages {
            assert!(
                message.as_deref().unwrap().contains("unreadable"),
                "{message:?}"
            );
        }
    }

    #[test]
    fn wrong_shapes_and_values_are_reported_per_slot() {
        let back = parse(
            r#"{"version": 99, "future": {"x": 1}, "slots": ["/ok.kbi", 5, "relative.kbi", "", null, {"a": 1}]}"#,
        );
        assert_eq!(back.paths[0].as_deref(), Some("/ok.kbi"));
        assert!(back.messages[0].is_none());
        assert!(back.messages[1]
            .as_deref()
            .unwrap()
            .contains("not a file path"));
        assert!(back.messages[2]
            .as_deref()
            .unwrap()
            .contains("not absolute"));
        assert!(back.messages[3].as_deref().unwrap().contains("empty"));
        assert!(back.messages[4].is_none() && back.paths[4].is_none());
        assert!(back.messages[5].is_some());

        for text in ["42", "\"x\"", "true", r#"{"slots": 3}"#] {
            let back = parse(text);
            assert!(back.paths.iter().all(Option::is_none), "{text}");
            assert!(back.messages.iter().all(Option::is_some), "{text}");
        }
        assert_eq!(parse("null"), SavedSlots::default());
        assert_eq!(parse("{}"), SavedSlots::default());
    }

    #[test]
    fn too_many_slots_and_huge_paths() {
        let mut entries: Vec<Value> = (0..20).map(|i| json!(format!("/v/{i}.kbi"))).collect();
        entries[2] = json!(format!("/{}", "x".repeat(MAX_PATH_BYTES + 1)));
        entries[3] = json!("/a\0b");
        let back = parse(&json!({ "slots": entries }).to_string());
        assert_eq!(back.paths[0].as_deref(), Some("/v/0.kbi"));
        assert!(back.paths[2].is_none() && back.messages[2].is_some());
        assert!(back.paths[3].is_none() && back.messages[3].is_some());
        assert_eq!(back.paths[7].as_deref(), Some("/v/7.kbi"));
        assert!(back.messages[7].as_deref().unwrap().contains("more than"));
    }

    #[test]
    fn missing_field_restores_empty_slots() {
        let mut fields = BTreeMap::new();
        sanitize_field(&mut fields);
        let back: SavedSlots = serde_json::from_str(&fields[FIELD_KEY]).unwrap();
        assert_eq!(back, SavedSlots::default());
    }

    #[test]
    fn store_refuses_bad_paths_from_the_editor() {
        let store = SlotStore::default();
        assert!(store.set_path(0, Path::new("relative")).is_err());
        assert!(store.set_path(SLOTS, Path::new("/a.kbi")).is_err());
        store.set_path(1, Path::new("/a.kbi")).unwrap();
        assert_eq!(store.path(1).as_deref(), Some("/a.kbi"));
        assert_eq!(store.saved().paths[1].as_deref(), Some("/a.kbi"));
        store.clear(1);
        assert_eq!(store.path(1), None);
    }
}
