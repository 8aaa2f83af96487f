//! Reading audio files (WAV, FLAC, MP3, Ogg Vorbis through `symphonia`) and writing float WAV
//! (through `hound`).

use std::fs::File;
use std::path::{Path, PathBuf};

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// File extensions taken as audio when a directory is searched.
pub const AUDIO_EXTENSIONS: [&str; 6] = ["wav", "wave", "flac", "mp3", "ogg", "oga"];

/// Why an audio file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not audio this build can decode.
    #[error("{path}: cannot decode: {message}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// What the decoder said.
        message: String,
    },
    /// The file decoded to no samples.
    #[error("{path}: holds no audio")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// Writing a WAV file failed.
    #[error("{path}: cannot write WAV: {message}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the writer said.
        message: String,
    },
}

/// Decoded audio: interleaved `f32` samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Audio {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Channel count (at least 1).
    pub channels: usize,
    /// Interleaved samples, `frames × channels`.
    pub samples: Vec<f32>,
}

impl Audio {
    /// Number of sample frames.
    pub fn frames(&self) -> usize {
        self.samples.len() / self.channels.max(1)
    }

    /// Duration, seconds.
    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / self.sample_rate.max(1) as f64
    }

    /// One `Vec` per channel.
    pub fn deinterleave(&self) -> Vec<Vec<f32>> {
        let ch = self.channels.max(1);
        (0..ch)
            .map(|c| self.samples.iter().skip(c).step_by(ch).copied().collect())
            .collect()
    }

    /// The mean of the channels (the voice engine's mid signal).
    pub fn mono(&self) -> Vec<f32> {
        super::extract::downmix(&self.samples, self.channels)
    }

    /// Audio from one `Vec` per channel (equally long).
    pub fn from_channels(channels: &[Vec<f32>], sample_rate: u32) -> Audio {
        let frames = channels.iter().map(|c| c.len()).min().unwrap_or(0);
        let mut samples = Vec::with_capacity(frames * channels.len());
        for i in 0..frames {
            samples.extend(channels.iter().map(|c| c[i]));
        }
        Audio {
            sample_rate,
            channels: channels.len().max(1),
            samples,
        }
    }
}

fn decode_err(path: &Path, e: impl std::fmt::Display) -> AudioError {
    AudioError::Decode {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Decodes the first audio track of `path`.
pub fn read_audio(path: &Path) -> Result<Audio, AudioError> {
    let file = File::open(path).map_err(|source| AudioError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            stream,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| decode_err(path, e))?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| decode_err(path, "no audio track"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| decode_err(path, e))?;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut channels = track.codec_params.channels.map_or(0, |c| c.count());
    let mut samples = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(decode_err(path, e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A corrupt packet: skip it, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(e) => return Err(decode_err(path, e)),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        channels = spec.channels.count();
        let needed = decoded.capacity() as u64;
        let buf = match &mut buffer {
            Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
            _ => buffer.insert(SampleBuffer::new(needed, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        samples.extend_from_slice(buf.samples());
    }
    if samples.is_empty() || channels == 0 || rate == 0 {
        return Err(AudioError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(Audio {
        sample_rate: rate,
        channels,
        samples,
    })
}

/// Writes `audio` as 32-bit float WAV, atomically (temporary file, then rename).
pub fn write_wav_f32(path: &Path, audio: &Audio) -> Result<(), AudioError> {
    let err = |e: hound::Error| AudioError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let spec = hound::WavSpec {
        channels: audio.channels as u16,
        sample_rate: audio.sample_rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut failure = None;
    let written = crate::format::write_atomically(path, |file| {
        let mut writer = hound::WavWriter::new(std::io::BufWriter::new(file), spec)
            .map_err(|e| keep(&mut failure, e))?;
        for &s in &audio.samples {
            writer.write_sample(s).map_err(|e| keep(&mut failure, e))?;
        }
        writer.finalize().map_err(|e| keep(&mut failure, e))
    });
    match (written, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(e)) => Err(err(e)),
        (Err(source), None) => Err(AudioError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Keeps a WAV encoder error for the message and turns it into an I/O error for the writer.
fn keep(slot: &mut Option<hound::Error>, e: hound::Error) -> std::io::Error {
    let io = std::io::Error::other(e.to_string());
    *slot = Some(e);
    io
}

/// The audio files named by `inputs`: files as given, directories searched recursively for
/// [`AUDIO_EXTENSIONS`] (case-insensitive), each directory's files in sorted order.
pub fn collect_audio_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, AudioError> {
    let mut out = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| AudioError::Io {
            path: input.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(input, &mut out)?;
        } else {
            out.push(input.clone());
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), AudioError> {
    let io = |source| AudioError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| AUDIO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_wav_round_trips_and_int_wav_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let a = Audio::from_channels(
            &[vec![0.0, 0.25, -0.5, 1.0], vec![0.1, 0.2, 0.3, -1.0]],
            22_050,
        );
        let p = dir.path().join("x.wav");
        write_wav_f32(&p, &a).unwrap();
        assert_eq!(read_audio(&p).unwrap(), a);

        let q = dir.path().join("sub").join("y.WAV");
        std::fs::create_dir_all(q.parent().unwrap()).unwrap();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&q, spec).unwrap();
        for s in [0i16, 16384, -16384, 32767] {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let b = read_audio(&q).unwrap();
        assert_eq!((b.sample_rate, b.channels, b.frames()), (16_000, 1, 4));
        assert!((b.samples[1] - 0.5).abs() < 1e-4);
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        let files = collect_audio_files(&[dir.path().to_path_buf()]).unwrap();
        assert_eq!(files, vec![q, p], "sorted: sub/ comes before x.wav");
    }

    #[test]
    fn garbage_is_a_readable_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.wav");
        std::fs::write(&p, b"RIFF\x10\x00\x00\x00WAVEjunkjunkjunk").unwrap();
        let e = read_audio(&p).unwrap_err();
        assert!(e.to_string().contains("bad.wav"), "{e}");
        let e = read_audio(&dir.path().join("missing.wav")).unwrap_err();
        assert!(matches!(e, AudioError::Io { .. }), "{e}");
    }
}
