//! The editor's match meter: the distance from each input frame to its nearest stored frame,
//! in the voice's own typical spacings, as the voice engine publishes it on its snapshot
//! board. It must tell a voice's own (unseen) speech from another voice's (espeak-ng, female
//! index, male input) and from noise (the project's synthesiser), and say nothing when nothing is
//! searched.

mod voice_common;

use std::path::Path;
use std::sync::Arc;

use knnblend::index::AnyIndex;
use knnblend::live::{AudioEngine, Controller, IndexInfo, LoadOutcome};
use knnblend::voice::synth::{synth_voice, VoiceParams};
use knnblend::voice::{
    build_from_audio, read_audio, write_wav_f32, Audio, BlockParams, BuildOptions, FeatureSpec,
    IndexRetriever, Retriever, SnapshotBoard, VoiceEngine,
};
use voice_common::{espeak, noise};

fn build(dir: &Path, name: &str, wavs: &[std::path::PathBuf]) -> Arc<AnyIndex> {
    let out = dir.join(name);
    build_from_audio(
        wavs,
        &out,
        &FeatureSpec::default(),
        &BuildOptions::default(),
        &mut |_, _, _| {},
    )
    .unwrap();
    Arc::new(AnyIndex::open(&out).unwrap())
}

/// The built-in synthesiser's high voice (seed 1, `seconds` long at 48 kHz) recorded into
/// `dir/high.wav` and indexed as `dir/high.kbi`.
fn high_voice(dir: &Path, seconds: f32) -> Arc<AnyIndex> {
    let rec = dir.join("high.wav");
    let x = synth_voice(&VoiceParams::high().with_seed(1), 48_000.0, seconds);
    write_wav_f32(&rec, &Audio::from_channels(&[x], 48_000)).unwrap();
    build(dir, "high.kbi", &[rec])
}

/// A live runtime of one slot serving `dir/high.kbi` (see [`high_voice`]): its control and
/// audio sides and what it published.
fn serve_high_voice(dir: &Path) -> (Controller, AudioEngine, Arc<IndexInfo>) {
    let (control, audio) = knnblend::live::live(FeatureSpec::default().live_config(1));
    let info = match control.load(0, dir.join("high.kbi")).wait() {
        LoadOutcome::Published(info) => info,
        other => panic!("{other:?}"),
    };
    (control, audio, info)
}

/// The match meter of every loud frame of `input` (one frame per hop-long block), at `ratio`.
fn meter(index: Option<Arc<AnyIndex>>, input: &[f32], sr: f32, ratio: f32) -> Vec<Option<f32>> {
    let e = VoiceEngine::with_retriever(IndexRetriever::new(index), &FeatureSpec::default(), sr, 1);
    meter_of(e, input, ratio)
}

/// [`meter`] of any engine.
fn meter_of<R: Retriever>(mut e: VoiceEngine<R>, input: &[f32], ratio: f32) -> Vec<Option<f32>> {
    let board = Arc::new(SnapshotBoard::new());
    e.set_snapshots(Some(board.clone()));
    let hop = e.framing().hop;
    let p = BlockParams {
        ratio,
        ..BlockParams::default()
    };
    let mut out = Vec::new();
    let mut last = 0;
    for chunk in input.chunks(hop) {
        let mut buf = chunk.to_vec();
        e.process(&mut [&mut buf], &p);
        let s = board.read();
        if s.frame != last && s.readout.level_db > -40.0 {
            out.push(s.readout.match_spacings);
        }
        last = s.frame;
    }
    out
}

fn median(v: &[Option<f32>]) -> f32 {
    let mut m: Vec<f32> = v.iter().map(|x| x.expect("a meter reading")).collect();
    assert!(m.len() > 20, "{} loud frames", m.len());
    m.sort_by(f32::total_cmp);
    m[m.len() / 2]
}

#[test]
fn espeak_voice_covers_its_own_speech_not_another_voice() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
        "A journey of a thousand miles begins with a single step taken in the early morning.",
        "Every morning the baker opens his shop and the smell of fresh bread fills the street.",
        "Music has the power to move people, to bring back memories and to change a mood.",
        "Bright violet flowers grew along the riverbank where the children used to play.",
    ];
    let female: Vec<_> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| espeak(dir.path(), "en-us+f3", i, t))
        .collect();
    let index = build(dir.path(), "female.kbi", &female);
    let unseen = "Nobody knows why the old lighthouse keeper left the island on that stormy night.";
    let same = read_audio(&espeak(dir.path(), "en-us+f3", 8, unseen)).unwrap();
    let other = read_audio(&espeak(dir.path(), "en-us+m3", 9, unseen)).unwrap();
    let sr = same.sample_rate as f32;
    let m_same = median(&meter(Some(index.clone()), &same.mono(), sr, 0.75));
    let m_other = median(&meter(Some(index.clone()), &other.mono(), sr, 0.75));
    eprintln!("match meter medians: same voice {m_same:.2}, male voice {m_other:.2}");
    // (Neither white noise nor a steady tone is a negative here: these sentences are full of
    // sibilants, which noise resembles, and a steady input's relative envelope is 0, the
    // middle of any voice. They read 1.5 and 1.4.)
    assert!(m_same < 2.0, "the voice's own speech: {m_same}");
    assert!(
        m_other > 1.5 * m_same,
        "another voice {m_other} vs {m_same}"
    );

    // Nothing is searched at Blend 0, and there is no voice without an index: no reading.
    assert!(meter(Some(index), &same.mono(), sr, 0.0)
        .iter()
        .all(Option::is_none));
    assert!(meter(None, &same.mono(), sr, 0.75)
        .iter()
        .all(Option::is_none));
}

#[test]
fn synth_voice_covers_itself_not_noise() {
    let dir = tempfile::tempdir().unwrap();
    let sr = 48_000.0;
    let index = high_voice(dir.path(), 20.0);
    let unseen = synth_voice(&VoiceParams::high().with_seed(2), sr, 6.0);
    let n: Vec<f32> = noise(sr as usize * 3, 9).iter().map(|x| 0.2 * x).collect();
    let m_same = median(&meter(Some(index.clone()), &unseen, sr, 1.0));
    let m_noise = median(&meter(Some(index), &n, sr, 1.0));
    eprintln!("match meter medians: same voice {m_same:.2}, noise {m_noise:.2}");
    assert!(m_same < 5.0, "{m_same}");
    assert!(m_noise > 3.0 * m_same, "noise {m_noise} vs {m_same}");
}

/// The plugin's path: the live runtime measures the voice's spacing when it prepares the index
/// (off the audio thread), and the meter reads the same as over the index itself.
#[test]
fn the_live_runtime_measures_the_same_spacing_when_it_prepares_a_voice() {
    let dir = tempfile::tempdir().unwrap();
    let sr = 48_000.0;
    let index = high_voice(dir.path(), 10.0);
    let spec = FeatureSpec::default();
    let (_control, audio, info) = serve_high_voice(dir.path());
    let spacing = info
        .typical_spacing
        .expect("a spacing for a voice of many frames");
    assert_eq!(Some(spacing), knnblend::index::typical_spacing(&index));
    let input = synth_voice(&VoiceParams::low().with_seed(2), sr, 3.0);
    let live = meter_of(VoiceEngine::new(audio, &spec, sr, 1), &input, 1.0);
    let fixed = meter(Some(index), &input, sr, 1.0);
    assert_eq!(live.len(), fixed.len());
    assert!(live.iter().all(Option::is_some));
    assert_eq!(live, fixed);
}

/// The RVC path blends whole blocks (`AudioEngine::blend_block`); its match meter is the mean
/// over the block's frames of what single blends report, and says nothing at ratio 0.
#[test]
fn a_blocks_match_is_the_mean_of_its_frames() {
    let dir = tempfile::tempdir().unwrap();
    let index = high_voice(dir.path(), 10.0);
    let flat = index.as_flat().unwrap();
    let dim = flat.dim();
    let (_control, mut audio, info) = serve_high_voice(dir.path());
    let spacing = info.typical_spacing.unwrap() as f64;
    // 40 frames: stored vectors, nudged so none is an exact match.
    let mut frames = Vec::new();
    for i in 0..40 {
        let v = flat.vector(i * 7 % flat.ntotal());
        frames.extend(
            v.iter()
                .enumerate()
                .map(|(j, x)| x + 0.05 * ((i + j) % 5) as f32),
        );
    }
    // The fade onto the voice runs its course first.
    let mut out = vec![0f32; frames.len()];
    for _ in 0..20 {
        audio.begin_block(0, 0.0);
        audio.blend_block(&frames, dim, 8, 1.0, &mut out);
        audio.end_block();
    }
    audio.begin_block(0, 0.0);
    let mut want = 0.0;
    for (q, o) in frames.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        match audio.blend(q, 8, 1.0, o) {
            knnblend::index::BlendOutcome::Blended { nearest, .. } => {
                want += (nearest as f64).sqrt() / spacing.sqrt() / 40.0;
            }
            other => panic!("{other:?}"),
        }
    }
    let single = audio.block_match().unwrap() as f64;
    audio.end_block();
    audio.begin_block(0, 0.0);
    assert_eq!(audio.block_match(), None, "a new block starts empty");
    assert_eq!(audio.blend_block(&frames, dim, 8, 1.0, &mut out), 40);
    let block = audio.block_match().unwrap() as f64;
    audio.end_block();
    assert!((single - want).abs() < 1e-5 * want, "{single} vs {want}");
    assert!((block - want).abs() < 1e-5 * want, "{block} vs {want}");
    audio.begin_block(0, 0.0);
    audio.blend_block(&frames, dim, 8, 0.0, &mut out);
    assert_eq!(audio.block_match(), None, "nothing is searched at ratio 0");
    audio.end_block();
}
