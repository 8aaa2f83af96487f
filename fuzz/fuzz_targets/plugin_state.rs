//! The plugin's saved state, as a host hands it back: JSON bytes → nice-plug's `PluginState` →
//! the plugin's `filter_state` (repairs parameters and the slot field) → the persisted slot
//! field deserialised into `SavedSlots` → applied to the parameters. The same bytes are also
//! tried as the raw text of the slot field. Whatever comes in: no panic, the sanitised slot field
//! always parses, every kept path is acceptable, and saving what was restored then restoring it
//! again gives byte-identical state.
#![no_main]

use std::collections::BTreeMap;
use std::sync::Arc;

use knnblend_plugin::params::KnnBlendParams;
use knnblend_plugin::slots::{check_path, sanitize_field, SavedSlots, SlotStore, FIELD_KEY};
use knnblend_plugin::KnnBlend;
use libfuzzer_sys::fuzz_target;
use nice_plug::prelude::{Params, Plugin, PluginState};

fn slots_from_field(fields: &mut BTreeMap<String, String>) -> SavedSlots {
    sanitize_field(fields);
    let saved: SavedSlots =
        serde_json::from_str(&fields[FIELD_KEY]).expect("a sanitised slot field always parses");
    for path in saved.paths.iter().flatten() {
        check_path(path).expect("only acceptable paths are kept");
    }
    saved
}

fn round_trips(saved: &SavedSlots) {
    let text = serde_json::to_string(saved).unwrap();
    let mut fields = BTreeMap::from([(FIELD_KEY.to_string(), text.clone())]);
    let back = slots_from_field(&mut fields);
    assert_eq!(back.paths, saved.paths);
    assert!(back.messages.iter().all(Option::is_none));
    assert_eq!(serde_json::to_string(&back).unwrap(), text);
}

fuzz_target!(|data: &[u8]| {
    // The bytes as the slot field's text.
    let mut fields = BTreeMap::from([(
        FIELD_KEY.to_string(),
        String::from_utf8_lossy(data).into_owned(),
    )]);
    round_trips(&slots_from_field(&mut fields));

    // The bytes as a whole saved plugin state.
    let Ok(mut state) = serde_json::from_slice::<PluginState>(data) else {
        return;
    };
    KnnBlend::filter_state(&mut state);
    let saved = slots_from_field(&mut state.fields.clone());
    round_trips(&saved);

    let params = KnnBlendParams::new(Arc::new(SlotStore::default()));
    params.deserialize_fields(&state.fields);
    let stored = params.serialize_fields();
    let again = KnnBlendParams::new(Arc::new(SlotStore::default()));
    again.deserialize_fields(&stored);
    assert_eq!(
        again.serialize_fields(),
        stored,
        "saved → restored → saved is not identical"
    );
    for slot in 0..saved.paths.len() {
        assert_eq!(params.slots.path(slot), saved.paths[slot]);
    }
});
