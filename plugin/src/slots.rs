//! The eight voice slots as plugin state: what each slot should hold (a knnblend voice index, or
//! an RVC voice: synthesizer, index, optional RMVPE, with one ContentVec shared by all), what
//! went wrong when a saved state could not be taken as it was, and forwarding of requests to
//! the runtimes' controllers (the `live` runtime for index slots, the RVC voice host for RVC
//! slots).
//!
//! Saved state is untrusted input. [`SavedSlots`] deserialises from any JSON value: garbled or
//! unknown content never fails, it yields empty slots and a message for each affected slot.
//!
//! State format (version 2): `{"version": 2, "slots": [entry…], "contentvec": path|null}`, an
//! entry being `null`, an index path, or `{"kind": "rvc", "model": path|null, "index":
//! path|null, "rmvpe": path|null}`. Version 1 (`"slots"` holding only paths or nulls) reads as
//! before.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use nice_plug::params::persist::PersistentField;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};

use crate::engine::{ControlHandle, LoadState, RvcControl, SlotKinds, ViewBoard, VoiceFiles};
use crate::params::SLOTS;

/// Key of the slot field in the plugin state.
pub const FIELD_KEY: &str = "slots";
/// Version written into saved slot state.
pub const STATE_VERSION: u64 = 2;

/// The files of an RVC slot, each chosen on its own (a slot serves once model and index are
/// set and the shared ContentVec is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RvcEntry {
    /// The synthesizer `.onnx`.
    pub model: Option<String>,
    /// Its `added_*.index` or `.kbi`.
    pub index: Option<String>,
    /// RMVPE `.onnx` (optional: the built-in tracker runs without it).
    pub rmvpe: Option<String>,
}

/// Which file of an RVC slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RvcFile {
    /// The synthesizer.
    Model,
    /// The index.
    Index,
    /// RMVPE.
    Rmvpe,
}

impl RvcEntry {
    /// One of the files.
    pub fn get(&self, which: RvcFile) -> &Option<String> {
        match which {
            RvcFile::Model => &self.model,
            RvcFile::Index => &self.index,
            RvcFile::Rmvpe => &self.rmvpe,
        }
    }

    fn get_mut(&mut self, which: RvcFile) -> &mut Option<String> {
        match which {
            RvcFile::Model => &mut self.model,
            RvcFile::Index => &mut self.index,
            RvcFile::Rmvpe => &mut self.rmvpe,
        }
    }

    /// The voice's files once model, index and `contentvec` are all known.
    pub fn files(&self, contentvec: Option<&str>) -> Option<VoiceFiles> {
        Some(VoiceFiles {
            model: self.model.as_ref()?.into(),
            index: self.index.as_ref()?.into(),
            contentvec: contentvec?.into(),
            rmvpe: self.rmvpe.as_ref().map(Into::into),
        })
    }
}
/// Longest path accepted from a saved state, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Slot contents as stored in the plugin state, plus (not stored) what was wrong with the input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SavedSlots {
    /// Index path per index slot, `None` for an empty or RVC slot.
    pub paths: [Option<String>; SLOTS],
    /// The files of each RVC slot (`None`: not an RVC slot).
    pub rvc: [Option<RvcEntry>; SLOTS],
    /// The ContentVec model every RVC slot uses.
    pub contentvec: Option<String>,
    /// Why a slot was reset while reading a saved state.
    pub messages: [Option<String>; SLOTS],
}

impl Serialize for SavedSlots {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let slots: Vec<Value> = (0..SLOTS)
            .map(|slot| match (&self.rvc[slot], &self.paths[slot]) {
                (Some(rvc), _) => json!({
                    "kind": "rvc",
                    "model": rvc.model,
                    "index": rvc.index,
                    "rmvpe": rvc.rmvpe,
                }),
                (None, path) => json!(path),
            })
            .collect();
        json!({ "version": STATE_VERSION, "slots": slots, "contentvec": self.contentvec })
            .serialize(serializer)
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
                match map.get("contentvec") {
                    None | Some(Value::Null) => {}
                    Some(Value::String(path)) => match check_path(path) {
                        Ok(()) => out.contentvec = Some(path.clone()),
                        Err(why) => out.note_all(&format!("ContentVec: {why}")),
                    },
                    Some(_) => out.note_all("saved ContentVec is not a file path; not set"),
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
                Value::Object(fields)
                    if fields.get("kind").and_then(Value::as_str) == Some("rvc") =>
                {
                    let mut entry = RvcEntry::default();
                    let mut problems = Vec::new();
                    for (key, which) in [
                        ("model", RvcFile::Model),
                        ("index", RvcFile::Index),
                        ("rmvpe", RvcFile::Rmvpe),
                    ] {
                        match fields.get(key) {
                            None | Some(Value::Null) => {}
                            Some(Value::String(path)) => match check_path(path) {
                                Ok(()) => *entry.get_mut(which) = Some(path.clone()),
                                Err(why) => problems.push(format!(
                                    "{key}: {}",
                                    why.replace("; slot left empty", "")
                                )),
                            },
                            Some(_) => problems.push(format!("{key}: not a file path")),
                        }
                    }
                    if !problems.is_empty() {
                        out.messages[slot] =
                            Some(format!("{}; those files were not set", problems.join("; ")));
                    }
                    out.rvc[slot] = Some(entry);
                }
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

    fn note_all(&mut self, why: &str) {
        for message in &mut self.messages {
            message.get_or_insert_with(|| why.to_string());
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
    /// What the user (or a restored state) asked each index slot to hold.
    paths: [Option<String>; SLOTS],
    /// The RVC slots' files.
    rvc: [Option<RvcEntry>; SLOTS],
    /// The shared ContentVec.
    contentvec: Option<String>,
    /// Messages from restoring a state or from a refused path.
    messages: [Option<String>; SLOTS],
    /// The runtime's control side, once the plugin is activated.
    control: Option<Arc<ControlHandle>>,
    /// The RVC voice host's control side, once the plugin is activated.
    rvc_control: Option<Arc<RvcControl>>,
    /// What the control side was last asked for each slot.
    sent: [Option<String>; SLOTS],
    /// What the RVC host was last asked for each slot.
    rvc_sent: [Option<VoiceFiles>; SLOTS],
    /// Why there is no RVC host, if it could not start.
    rvc_failure: Option<String>,
}

/// Shared slot state: persisted through nice-plug, edited by the editor, forwarded to the
/// runtimes' controllers. Only ever touched off the audio thread (except [`SlotKinds`], which
/// the audio thread reads).
#[derive(Default)]
pub struct SlotStore {
    inner: Mutex<Inner>,
    kinds: Arc<SlotKinds>,
    board: Arc<ViewBoard>,
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
        self.sync(&mut inner);
    }

    /// Connects a (new) RVC voice host and asks it for every RVC slot's voice.
    pub fn attach_rvc(&self, control: Option<Arc<RvcControl>>) {
        let mut inner = self.lock();
        if control.is_some() {
            inner.rvc_failure = None;
        }
        inner.rvc_control = control;
        inner.rvc_sent = Default::default();
        self.sync(&mut inner);
    }

    /// Records why the RVC voice host could not start (`None` clears it).
    pub fn set_rvc_failure(&self, why: Option<String>) {
        self.lock().rvc_failure = why;
    }

    /// Why the RVC voice host could not start, if it could not.
    pub fn rvc_failure(&self) -> Option<String> {
        self.lock().rvc_failure.clone()
    }

    /// The runtime's control side, if the plugin has been activated.
    pub fn control(&self) -> Option<Arc<ControlHandle>> {
        self.lock().control.clone()
    }

    /// The RVC voice host's control side, if the plugin has been activated.
    pub fn rvc_control(&self) -> Option<Arc<RvcControl>> {
        self.lock().rvc_control.clone()
    }

    /// Which slots are RVC slots, for the audio thread.
    pub fn kinds(&self) -> Arc<SlotKinds> {
        self.kinds.clone()
    }

    /// The board the voice path publishes its frames on, for the runtime and the editor.
    pub fn view_board(&self) -> Arc<ViewBoard> {
        self.board.clone()
    }

    /// The files of RVC slot `slot` (`None`: an index slot).
    pub fn rvc(&self, slot: usize) -> Option<RvcEntry> {
        self.lock().rvc.get(slot).cloned().flatten()
    }

    /// The shared ContentVec.
    pub fn contentvec(&self) -> Option<String> {
        self.lock().contentvec.clone()
    }

    /// Makes `slot` an RVC slot (`true`, keeping files it had) or an index slot (`false`); the
    /// other kind's files are cleared.
    pub fn set_rvc_kind(&self, slot: usize, rvc: bool) {
        if slot >= SLOTS {
            return;
        }
        let mut inner = self.lock();
        if rvc == inner.rvc[slot].is_some() {
            return;
        }
        if rvc {
            inner.paths[slot] = None;
            inner.rvc[slot] = Some(RvcEntry::default());
        } else {
            inner.rvc[slot] = None;
        }
        inner.messages[slot] = None;
        self.sync(&mut inner);
    }

    /// Sets one file of RVC slot `slot` (making it an RVC slot); `None` clears it.
    pub fn set_rvc_file(
        &self,
        slot: usize,
        which: RvcFile,
        path: Option<&Path>,
    ) -> Result<(), String> {
        if slot >= SLOTS {
            return Err(format!("there is no slot {}", slot + 1));
        }
        let text = path.map(checked).transpose()?;
        let mut inner = self.lock();
        inner.paths[slot] = None;
        let entry = inner.rvc[slot].get_or_insert_with(RvcEntry::default);
        *entry.get_mut(which) = text;
        inner.messages[slot] = None;
        self.sync(&mut inner);
        Ok(())
    }

    /// Sets (or with `None` clears) the ContentVec every RVC slot uses.
    pub fn set_contentvec(&self, path: Option<&Path>) -> Result<(), String> {
        let text = path.map(checked).transpose()?;
        let mut inner = self.lock();
        inner.contentvec = text;
        self.sync(&mut inner);
        Ok(())
    }

    /// Requests index `path` in `slot` (0-based), making it an index slot.
    pub fn set_path(&self, slot: usize, path: &Path) -> Result<(), String> {
        if slot >= SLOTS {
            return Err(format!("there is no slot {}", slot + 1));
        }
        let text = checked(path)?;
        let mut inner = self.lock();
        inner.paths[slot] = Some(text);
        inner.rvc[slot] = None;
        inner.messages[slot] = None;
        self.sync(&mut inner);
        Ok(())
    }

    /// Empties `slot` (0-based): an index slot loses its index, an RVC slot its files (it stays
    /// an RVC slot).
    pub fn clear(&self, slot: usize) {
        if slot >= SLOTS {
            return;
        }
        let mut inner = self.lock();
        inner.paths[slot] = None;
        if let Some(entry) = &mut inner.rvc[slot] {
            *entry = RvcEntry::default();
        }
        inner.messages[slot] = None;
        self.sync(&mut inner);
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
            rvc: inner.rvc.clone(),
            contentvec: inner.contentvec.clone(),
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
        inner.rvc = saved.rvc;
        inner.contentvec = saved.contentvec;
        inner.messages = saved.messages;
        self.sync(&mut inner);
    }

    /// Sends the control sides whatever changed since the last call.
    fn sync(&self, inner: &mut Inner) {
        for slot in 0..SLOTS {
            self.kinds.set_rvc(slot, inner.rvc[slot].is_some());
        }
        if let Some(control) = inner.control.clone() {
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
        if let Some(control) = inner.rvc_control.clone() {
            for slot in 0..SLOTS {
                let want = inner.rvc[slot]
                    .as_ref()
                    .and_then(|entry| entry.files(inner.contentvec.as_deref()));
                if want != inner.rvc_sent[slot] {
                    control.set(slot, want.clone());
                    inner.rvc_sent[slot] = want;
                }
            }
        }
    }
}

/// `path` as an acceptable slot path.
fn checked(path: &Path) -> Result<String, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("path {} is not valid UTF-8", path.display()))?;
    check_path(text).map_err(|why| {
        why.replace("saved path", "path")
            .replace("; slot left empty", "")
    })?;
    Ok(text.to_string())
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

    #[test]
    fn rvc_slots_round_trip_and_version_1_still_reads() {
        let mut saved = SavedSlots::default();
        saved.paths[0] = Some("/voices/a.kbi".into());
        saved.rvc[1] = Some(RvcEntry {
            model: Some("/rvc/alto.onnx".into()),
            index: Some("/rvc/added_IVF256_Flat_nprobe_1_alto_v2.index".into()),
            rmvpe: None,
        });
        saved.rvc[2] = Some(RvcEntry::default());
        saved.contentvec = Some("/rvc/vec-768-layer-12.onnx".into());
        let text = serde_json::to_string(&saved).unwrap();
        assert!(text.contains("\"version\":2"), "{text}");
        let back = parse(&text);
        assert_eq!(back, saved);
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        // The files of a complete RVC slot, with the shared ContentVec.
        let files = back.rvc[1]
            .as_ref()
            .unwrap()
            .files(back.contentvec.as_deref())
            .unwrap();
        assert_eq!(files.contentvec, Path::new("/rvc/vec-768-layer-12.onnx"));
        assert!(back.rvc[2]
            .as_ref()
            .unwrap()
            .files(back.contentvec.as_deref())
            .is_none());

        // A version-1 state (a project saved before RVC slots existed).
        let old = parse(r#"{"version": 1, "slots": ["/voices/a.kbi", null, "/voices/b.index"]}"#);
        assert_eq!(old.paths[0].as_deref(), Some("/voices/a.kbi"));
        assert_eq!(old.paths[2].as_deref(), Some("/voices/b.index"));
        assert!(old.rvc.iter().all(Option::is_none));
        assert!(old.contentvec.is_none());
        assert!(old.messages.iter().all(Option::is_none));
    }

    #[test]
    fn hostile_rvc_entries_keep_what_is_valid_and_say_what_is_not() {
        let back = parse(
            r#"{"version": 2, "contentvec": "relative.onnx", "slots": [
                {"kind": "rvc", "model": "/m.onnx", "index": 5, "rmvpe": "rel.onnx"},
                {"kind": "something-else", "model": "/m.onnx"},
                {"kind": "rvc"}
            ]}"#,
        );
        let entry = back.rvc[0].as_ref().unwrap();
        assert_eq!(entry.model.as_deref(), Some("/m.onnx"));
        assert!(entry.index.is_none() && entry.rmvpe.is_none());
        let message = back.messages[0].as_deref().unwrap();
        assert!(message.contains("index: not a file path"), "{message}");
        assert!(message.contains("rmvpe"), "{message}");
        assert!(back.rvc[1].is_none() && back.paths[1].is_none());
        assert!(back.messages[1]
            .as_deref()
            .unwrap()
            .contains("not a file path"));
        assert_eq!(back.rvc[2], Some(RvcEntry::default()));
        assert!(back.contentvec.is_none());
        assert!(back.messages[2].as_deref().unwrap().contains("ContentVec"));
    }

    #[test]
    fn kinds_follow_the_store() {
        let store = SlotStore::default();
        let kinds = store.kinds();
        store.set_path(0, Path::new("/a.kbi")).unwrap();
        store
            .set_rvc_file(0, RvcFile::Model, Some(Path::new("/m.onnx")))
            .unwrap();
        assert!(kinds.is_rvc(0));
        assert_eq!(store.path(0), None, "an RVC slot holds no index path");
        assert!(store
            .set_rvc_file(0, RvcFile::Index, Some(Path::new("rel")))
            .is_err());
        store.clear(0);
        assert!(kinds.is_rvc(0), "clearing keeps the kind");
        assert_eq!(store.rvc(0), Some(RvcEntry::default()));
        store.set_rvc_kind(0, false);
        assert!(!kinds.is_rvc(0));
        assert!(store.set_contentvec(Some(Path::new("/cv.onnx"))).is_ok());
        assert_eq!(store.contentvec().as_deref(), Some("/cv.onnx"));
    }
}
