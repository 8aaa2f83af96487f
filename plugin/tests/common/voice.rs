//! Test voices built with the library (no faiss): a synthetic voice's features in an exact
//! single-list index, and a valid index of the wrong feature kind.

#![allow(dead_code)]

/// Builds a small voice index with the library (synthetic voice, exact single-list index) and
/// writes it as a `.kbi` in `dir`.
pub fn make_voice(dir: &std::path::Path, name: &str, high: bool) -> std::path::PathBuf {
    use knnblend::voice::{self, synth, Extractor, FeatureSpec, SilenceRule};
    let spec = FeatureSpec::default();
    let sample_rate = 44_100.0;
    let seconds = 4.0;
    let params = if high {
        synth::VoiceParams::high()
    } else {
        synth::VoiceParams::low()
    };
    let audio = synth::synth_voice(&params, sample_rate, seconds);
    let extracted = Extractor::new(&spec, sample_rate).extract(&audio, &SilenceRule::default());
    assert!(extracted.frames > 10, "synthetic voice gave no frames");
    // As `knnblend build --audio` composes them (without its faiss training step: one exact
    // list is enough for a few hundred frames).
    let (rows, mean) = spec.speaker_rows(&extracted.rows);
    let mut metadata = spec.metadata(
        vec![name.to_string()],
        extracted.frames as u64,
        seconds as f64,
    );
    metadata
        .extra
        .insert("speaker_mean".into(), serde_json::json!(mean));
    let parts = voice::flat_parts(&rows, spec.dim(), knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write test voice");
    path
}

/// A valid index whose features do not match the voice engine (another feature kind).
pub fn make_mismatched(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let dim = 768;
    let rows: Vec<f32> = (0..dim * 16).map(|i| (i % 97) as f32 / 97.0).collect();
    let metadata = knnblend::format::Metadata {
        features: "rvc-v2-768".to_string(),
        feature_params: serde_json::json!({}),
        sources: vec![],
        frames: 16,
        duration_seconds: 0.16,
        extra: Default::default(),
    };
    let parts = knnblend::voice::flat_parts(&rows, dim, knnblend::format::Metric::L2, metadata);
    let path = dir.join(name);
    knnblend::format::write_kbi(&path, &parts).expect("write mismatched index");
    path
}
