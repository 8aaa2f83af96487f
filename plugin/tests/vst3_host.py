#!/usr/bin/env python3
"""The bundled VST3 plugin in a real host (pedalboard, JUCE's VST3 hosting).

Usage: vst3_host.py path/to/knnblend.vst3

Loads the plugin, lists its parameters, processes audio at 44.1/48/96 kHz and several block
sizes, applies parameter changes, restores a state naming a voice and waits for that voice to
serve, saves the state and restores it into a fresh instance (same voice, same output), and
feeds hostile state. A test voice is built with the library through the plugin crate's
`make_test_voice` example (set KNNBLEND_TEST_VOICE to use an existing .kbi instead).

RVC slots: a state naming an RVC voice in slot 1 (stand-in models with the official RVC
signatures from rvc/tests/fixtures/make_models.py, run with this interpreter, which must be
target/venv's; a 768-d faiss IVF-Flat `added_*.index` written here with numpy, the format RVC
itself writes) is processed at 44.1, 48 and 96 kHz until the output is the converted signal,
and a corrupt synthesizer must leave the audio passing through, delayed by the reported latency.
ORT_DYLIB_PATH is removed from the environment first: ONNX Runtime must be the copy in the bundle.

How those checks drive pedalboard. `process()` runs as fast as it can, but the RVC worker
converts on its own thread in wall time, so the audio is fed in 1024-sample chunks with
`reset=False` and the script sleeps until each chunk is due (about real time). pedalboard's
latency compensation counts samples since the last reset: with `reset=True` one call drops the
first `reported_latency_samples` of its output and feeds as many extra samples to flush the
tail; with `reset=False` it drops them across calls, counting from the last reset, but a fresh
instance has already been fed 5632 samples by pedalboard's reload-type probe (so it would drop
too few). Each rate therefore starts with one `reset=True` call (it also switches the rate:
prepareToPlay, a new activation); after it the compensation is spent and every later
`reset=False` call returns the plugin's own output: the input delayed by the reported latency.

Prints one line per check and finally exactly `N passed, N failed` (then `, N skipped` when a
check called `skip()`); exits non-zero on failure.
"""

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np
import pedalboard

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RATES = [44100, 48000, 96000]
BLOCKS = [32, 441, 512, 4096]
EXPECTED_PARAMS = {
    "blend": "Blend",
    "neighbours": "Neighbours",
    "query_expansion": "Query Expansion",
    "expansion_alpha": "Expansion Alpha",
    "voice": "Voice",
    "crossfade_ms": "Crossfade",
    "dry_wet": "Dry/Wet",
    "output_gain_db": "Output Gain",
}

RESULTS = []


class Skipped(Exception):
    """Raised by `skip`: the check cannot run here."""


def skip(reason, fix):
    """Ends the running check as skipped (`reason`, and `fix`: what makes it run). Under CI=true
    (or CI=1) a skip is a failure; elsewhere the check prints the skip line
    `KNNBLEND-SKIPPED: vst3_host.py::<check>: <reason> (<fix>)`, which `cargo xtask test`
    lists as SKIPPED, and the closing line counts it as skipped, never as passed."""
    raise Skipped(f"{reason} ({fix})")


def in_ci():
    return os.environ.get("CI", "").lower() in ("true", "1")


def check(name):
    """Decorator: runs the check, records pass/fail/skip, never stops the run."""

    def wrap(fn):
        start = time.time()
        try:
            fn()
        except Skipped as why:
            if in_ci():
                RESULTS.append((name, False))
                print(f"FAIL {name}: cannot run: {why} (CI is set, so this check does not skip)")
            else:
                RESULTS.append((name, None))
                print(f"KNNBLEND-SKIPPED: vst3_host.py::{name}: {why}")
        except Exception:  # noqa: BLE001 - every failure is reported, none stops the run
            RESULTS.append((name, False))
            print(f"FAIL {name} ({time.time() - start:.1f}s)")
            traceback.print_exc()
        else:
            RESULTS.append((name, True))
            print(f"ok   {name} ({time.time() - start:.1f}s)")
        sys.stdout.flush()
        return fn

    return wrap


# --- JUCE's VST3 state blob -------------------------------------------------------------------
# pedalboard's raw_state is JUCE's binary XML ("VC2!", u32 length, XML + NUL); the plugin's own
# state is the IComponent element in JUCE's base64 ("<size>.<chars>", little-endian bit stream).

JUCE_ALPHABET = ".ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+"


def juce_b64_decode(text):
    size_text, chars = text.split(".", 1)
    size = int(size_text)
    value = 0
    for i, c in enumerate(chars):
        value |= JUCE_ALPHABET.index(c) << (6 * i)
    return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")


def juce_b64_encode(data):
    value = int.from_bytes(data, "little")
    count = (len(data) * 8 + 5) // 6
    return f"{len(data)}." + "".join(JUCE_ALPHABET[(value >> (6 * i)) & 63] for i in range(count))


def component_state(raw):
    """The plugin's own state (nice-plug JSON) inside pedalboard's raw_state."""
    assert raw[:4] == b"VC2!", raw[:16]
    length = struct.unpack("<I", raw[4:8])[0]
    xml = raw[8 : 8 + length].rstrip(b"\0")
    match = re.search(rb"<IComponent>([^<]*)</IComponent>", xml)
    assert match, xml[:200]
    return juce_b64_decode(match.group(1).decode())


def with_component_state(raw, component):
    """raw_state with the plugin's own state replaced by `component`."""
    length = struct.unpack("<I", raw[4:8])[0]
    xml = raw[8 : 8 + length].rstrip(b"\0")
    encoded = juce_b64_encode(component).encode()
    xml = re.sub(rb"<IComponent>[^<]*</IComponent>", b"<IComponent>" + encoded + b"</IComponent>", xml)
    return b"VC2!" + struct.pack("<I", len(xml) + 1) + xml + b"\0"


# --- helpers ------------------------------------------------------------------------------------


def signal(rate, seconds, channels=2, seed=0):
    """A voice-like test signal: harmonics with vibrato plus a little noise."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    f0 = 160.0 + 12.0 * np.sin(2 * np.pi * 5.0 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(phase * h) / h for h in range(1, 9)) * 0.25
    x = x + 0.01 * np.random.RandomState(seed).randn(n)
    return np.stack([x * (1.0 - 0.1 * c) for c in range(channels)]).astype(np.float32)


def residual_db(a, b, skip):
    """Peak of a - b after `skip` samples, dBFS (pedalboard compensates the reported latency)."""
    d = np.abs(a[..., skip:] - b[..., skip:]).max()
    return 20 * np.log10(max(float(d), 1e-20))


def load(path):
    return pedalboard.load_plugin(path)


def set_defaults(p):
    p.blend = 75
    p.neighbours = 8
    p.voice = "Slot 1"
    p.crossfade_ms = 50
    p.dry_wet = 100
    p.output_gain_db = 0.0


def voice_index(workdir):
    """Path of a test voice .kbi, built with the library through the plugin's example."""
    given = os.environ.get("KNNBLEND_TEST_VOICE")
    if given:
        return given
    out = os.path.join(workdir, "test-voice.kbi")
    for profile in ("debug", "release"):
        exe = os.path.join(ROOT, "target", profile, "examples", "make_test_voice")
        if os.path.exists(exe):
            subprocess.run([exe, out], check=True, stdout=subprocess.DEVNULL)
            return out
    subprocess.run(
        ["cargo", "run", "--quiet", "-p", "knnblend-plugin", "--example", "make_test_voice", "--", out],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return out


def state_with_voice(p, path):
    """p's raw_state with `path` in slot 1."""
    raw = p.raw_state
    component = json.loads(component_state(raw))
    component["fields"]["slots"] = json.dumps({"version": 1, "slots": [path]})
    return with_component_state(raw, json.dumps(component).encode())


def wait_until_converting(p, rate, timeout=60.0):
    """Processes until the voice visibly converts at Blend 100 % (loads run in the background)."""
    probe = signal(rate, 0.5)
    deadline = time.time() + timeout
    while True:
        out = p.process(probe, rate, buffer_size=512, reset=True)
        db = residual_db(out, probe, int(0.1 * rate))
        if db > -60.0:
            return db
        if time.time() > deadline:
            raise AssertionError(f"the voice never started serving (residual {db:.1f} dBFS)")
        time.sleep(0.05)


# --- RVC slots ----------------------------------------------------------------------------------

RVC_TIMES = {"block": 100.0, "extra": 300.0, "sola": 40.0}
# (host rate, synthesizer, with RMVPE): every model rate once (the fixed latency covers all).
RVC_RUNS = [
    (44100, "synth_v2_40k.onnx", True),
    (48000, "synth_v2_48k.onnx", False),
    (96000, "synth_v2_32k.onnx", True),
]
RVC_CHUNK = 1024
RVC_WINDOW = 0.05
CONVERTED_DB = -20.0
STEADY_SECONDS = 2.0
SERVE_TIMEOUT = 30.0


def write_faiss_ivf_flat(path, rows):
    """rows (n × d) as a faiss IVF-Flat index with one list (`IwFl`, flat L2 quantizer, `ilar`
    inverted lists), byte for byte as faiss `write_index` lays it out (src/format/faiss.rs)."""
    n, d = rows.shape
    rows = np.ascontiguousarray(rows, dtype="<f4")

    def header(ntotal):
        # d, ntotal, two dummies (faiss writes 1 << 20), is_trained, metric (1 = L2)
        return struct.pack("<iqqqBi", d, ntotal, 1 << 20, 1 << 20, 1, 1)

    out = b"IwFl" + header(n) + struct.pack("<QQ", 1, 1)  # nlist, nprobe
    centroid = rows.mean(axis=0).astype("<f4")
    out += b"IxF2" + header(1) + struct.pack("<Q", d) + centroid.tobytes()
    out += struct.pack("<BQ", 0, 0)  # no direct map
    out += b"ilar" + struct.pack("<QQ", 1, d * 4) + b"full" + struct.pack("<QQ", 1, n)
    out += rows.tobytes() + np.arange(n, dtype="<i8").tobytes()
    with open(path, "wb") as f:
        f.write(out)


def rvc_files(workdir):
    """Stand-in models (make_models.py) and a 768-d index near the stand-in ContentVec's
    curve (1 + c/C)·E + (c/C − 0.5), E from 0.02 to 0.07."""
    models = os.path.join(workdir, "rvc-models")
    script = os.path.join(ROOT, "rvc", "tests", "fixtures", "make_models.py")
    run = subprocess.run([sys.executable, script, models], capture_output=True, text=True)
    if run.returncode != 0:
        raise AssertionError(
            f"make_models.py failed with {sys.executable} (run `cargo xtask setup`, which installs "
            f"onnx and numpy into target/venv):\n{run.stdout}{run.stderr}"
        )
    d = 768
    c = np.arange(d) / d
    e = 0.02 + 0.0002 * np.arange(256)[:, None]
    index = os.path.join(workdir, "added_IVF1_Flat_nprobe_1_stand_in_v2.index")
    write_faiss_ivf_flat(index, (1 + c) * e + (c - 0.5))
    return models, index


def onnx_runtimes_mapped():
    """Files named libonnxruntime* mapped into this process."""
    with open("/proc/self/maps") as f:
        paths = {line.split()[5] for line in f if len(line.split()) >= 6}
    return sorted(p for p in paths if os.path.basename(p).startswith("libonnxruntime"))


def state_with_rvc(p, models, synth, index, rmvpe):
    """p's raw_state with slot 1 an RVC slot, the ContentVec set, the RVC times, slot 1 active."""
    raw = p.raw_state
    component = json.loads(component_state(raw))
    component["params"].update({k: {"f32": v} for k, v in RVC_TIMES.items()})
    component["params"]["voice"] = {"i32": 1}
    component["params"]["mix"] = {"f32": 1.0}
    entry = {"kind": "rvc", "model": synth, "index": index, "rmvpe": rmvpe}
    slots = {"version": 2, "contentvec": os.path.join(models, "vec-768-layer-12.onnx"), "slots": [entry]}
    component["fields"]["slots"] = json.dumps(slots)
    return with_component_state(raw, json.dumps(component).encode())


class Windows:
    """The output against the input's mono mix delayed by `latency`, window by window."""

    def __init__(self, x, rate, latency, count_from=0):
        self.rate = rate
        self.latency = latency
        self.window = int(RVC_WINDOW * rate)
        # Windows starting earlier (samples) never count as the first converted one.
        self.count_from = count_from
        mono = x.mean(axis=0)
        self.dry = np.concatenate([np.zeros(latency, np.float32), mono])
        self.input_rms = float(np.sqrt(np.mean(mono**2)))
        self.rel_db = []
        self.worst = []
        self.first_converted = None

    def update(self, y):
        while (len(self.rel_db) + 1) * self.window <= y.shape[1]:
            a = len(self.rel_db) * self.window
            b = a + self.window
            diff = y[:, a:b] - self.dry[a:b]
            rel = np.sqrt(np.mean(diff[0] ** 2)) / self.input_rms
            self.rel_db.append(20 * np.log10(max(float(rel), 1e-12)))
            self.worst.append(float(np.abs(diff).max()))
            if self.first_converted is None and self.rel_db[-1] > CONVERTED_DB and a >= self.count_from:
                self.first_converted = len(self.rel_db) - 1

    def steady(self):
        f = self.first_converted
        return f is not None and len(self.rel_db) - f >= STEADY_SECONDS / RVC_WINDOW


def stream_realtime(p, x, rate, watch=None):
    """One reset=True call (switches the rate; pedalboard's compensation ends there), then
    RVC_CHUNK-sample reset=False calls paced to real time, until the input ends, watch(y so
    far) returns False, or the reported latency moves. Returns (output after the first call,
    the input it belongs to, the latencies seen in order)."""
    first = RVC_CHUNK
    y0 = p.process(x[:, :first], rate, buffer_size=512, reset=True)
    assert y0.shape == (x.shape[0], first) and np.isfinite(y0).all(), y0.shape
    rest = x[:, first:]
    outs = []
    done = 0
    latencies = [p.reported_latency_samples]
    start = time.time()
    for i in range(0, rest.shape[1], RVC_CHUNK):
        y = p.process(rest[:, i : i + RVC_CHUNK], rate, buffer_size=512, reset=False)
        assert y.shape[1] == min(RVC_CHUNK, rest.shape[1] - i), (y.shape, i)
        outs.append(y)
        done += y.shape[1]
        if p.reported_latency_samples != latencies[-1]:
            latencies.append(p.reported_latency_samples)
            break
        if watch and len(outs) % 8 == 0 and not watch(np.concatenate(outs, axis=1)):
            break
        due = start + done / rate
        if due > time.time():
            time.sleep(due - time.time())
    return np.concatenate(outs, axis=1), rest, latencies


def stream_settled(p, x, rate, watch=None):
    """stream_realtime, started again (a host re-syncing its delay compensation) when the
    reported latency moved: it may, once, after a state with other Block / Extra / Block
    crossfade times was restored while the plugin was active (the RVC host learns the times
    from process() and waits 250 ms for them to settle before it reopens the voice for them).
    Returns (output, input, latency, the latencies of a first run that moved or None)."""
    y, rest, latencies = stream_realtime(p, x, rate, watch)
    moved = None
    if len(latencies) > 1:
        moved = latencies
        y, rest, latencies = stream_realtime(p, x, rate, watch)
    assert len(latencies) == 1, f"{rate} Hz: the latency keeps moving: {moved} then {latencies}"
    return y, rest, latencies[0], moved


# --- the checks ---------------------------------------------------------------------------------


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    bundle = sys.argv[1]
    # The plugin must find ONNX Runtime beside itself in the bundle, not through the variable.
    os.environ.pop("ORT_DYLIB_PATH", None)
    workdir = tempfile.mkdtemp(prefix="knnblend-vst3-")
    state = {}

    @check("load the bundle and list parameters")
    def _():
        p = load(bundle)
        assert p.name == "kNN Blend", p.name
        assert p.is_effect
        names = {k: v.name for k, v in p.parameters.items()}
        print("    parameters:", ", ".join(f"{k} ({v.string_value})" for k, v in p.parameters.items()))
        for key, label in EXPECTED_PARAMS.items():
            assert names.get(key) == label, (key, names)
        assert p.parameters["blend"].string_value == "75"
        assert p.parameters["dry_wet"].string_value == "100"
        assert p.parameters["voice"].string_value == "Slot 1"
        state["plugin"] = p

    @check("process at 44.1/48/96 kHz and several block sizes")
    def _():
        p = state["plugin"]
        for rate in RATES:
            x = signal(rate, 0.6)
            for block in BLOCKS:
                y = p.process(x, rate, buffer_size=block, reset=True)
                assert y.shape == x.shape, (y.shape, x.shape)
                assert np.isfinite(y).all(), (rate, block)
                assert np.abs(y).max() < 4.0, (rate, block, np.abs(y).max())
        mono = signal(48000, 0.3, channels=1)
        y = p.process(mono, 48000, buffer_size=256, reset=True)
        assert y.shape == mono.shape and np.isfinite(y).all()

    @check("parameter changes take effect (dry/wet 0 and blend 0 null, gain)")
    def _():
        p = state["plugin"]
        set_defaults(p)
        for rate in RATES:
            x = signal(rate, 0.8)
            skip = int(0.2 * rate)
            p.dry_wet = 0
            assert p.dry_wet == 0
            db = residual_db(p.process(x, rate, buffer_size=512, reset=True), x, skip)
            assert db <= -100.0, f"dry/wet 0 at {rate} Hz: {db:.1f} dBFS"
            p.dry_wet = 100
            p.blend = 0
            db = residual_db(p.process(x, rate, buffer_size=441, reset=True), x, skip)
            assert db <= -100.0, f"blend 0 at {rate} Hz: {db:.1f} dBFS"
            p.output_gain_db = -6.0
            y = p.process(x, rate, buffer_size=512, reset=True)
            ratio = np.abs(y[:, skip:]).max() / np.abs(x[:, skip:]).max()
            assert abs(20 * np.log10(ratio) + 6.0) < 0.5, ratio
            set_defaults(p)
        p.neighbours = 3
        p.voice = "Slot 4"
        p.crossfade_ms = 200
        assert p.neighbours == 3 and p.voice == "Slot 4" and p.crossfade_ms == 200
        set_defaults(p)

    @check("a restored state loads its voice (waits for the load)")
    def _():
        path = voice_index(workdir)
        state["voice"] = path
        p = load(bundle)
        p.raw_state = state_with_voice(p, path)
        p.blend = 100
        db = wait_until_converting(p, 48000)
        print(f"    voice serving: residual against the input {db:.1f} dBFS")
        state["with_voice"] = p

    @check("save and restore into a fresh instance: same state, same voice, same output")
    def _():
        a = state["with_voice"]
        saved = a.raw_state
        b = load(bundle)
        b.raw_state = saved
        assert component_state(b.raw_state) == component_state(saved)
        assert b.blend == a.blend
        wait_until_converting(b, 48000)
        for rate in (48000, 96000):
            x = signal(rate, 1.0, seed=3)
            ya = a.process(x, rate, buffer_size=512, reset=True)
            yb = b.process(x, rate, buffer_size=128, reset=True)
            worst = float(np.abs(ya - yb).max())
            assert worst <= 1e-5, f"restored instance differs by {worst} at {rate} Hz"

    @check("hostile state is refused or repaired; audio keeps flowing")
    def _():
        p = state.get("with_voice") or load(bundle)
        raw = p.raw_state
        component = json.loads(component_state(raw))
        garbled = dict(component)
        garbled["fields"] = {"slots": '{"slots": ["/no/such/file.kbi", 7, "relative.kbi"'}
        garbled["params"] = dict(component["params"], blend={"f32": 1e30}, voice={"i32": -5})
        cases = [
            with_component_state(raw, b"garbage"),
            with_component_state(raw, b""),
            with_component_state(raw, json.dumps(garbled).encode()),
            with_component_state(raw, json.dumps({"params": {}, "fields": {"slots": "[1,2]"}}).encode()),
            b"VC2!\xff\xff\xff\xff",
            b"",
        ]
        x = signal(48000, 0.3)
        for case in cases:
            try:
                p.raw_state = case
            except Exception as err:  # noqa: BLE001 - a refusal is fine, a crash is not
                print(f"    refused: {type(err).__name__}")
            y = p.process(x, 48000, buffer_size=512, reset=True)
            assert np.isfinite(y).all()
            assert 0 <= p.blend <= 100, p.blend
            assert p.voice in [f"Slot {i}" for i in range(1, 9)], p.voice

    @check("an RVC slot converts at 44.1/48/96 kHz (real-time paced chunks, reset=False)")
    def _():
        models, index = rvc_files(workdir)
        state["rvc"] = (models, index)
        p = load(bundle)
        latency_ms = {}
        for rate, synth, with_rmvpe in RVC_RUNS:
            rmvpe = os.path.join(models, "rmvpe.onnx") if with_rmvpe else None
            p.raw_state = state_with_rvc(p, models, os.path.join(models, synth), index, rmvpe)
            assert p.block_ms == 100 and p.extra_context_ms == 300 and p.block_crossfade_ms == 40
            x = signal(rate, 20.0, seed=5)
            began = time.time()
            watched = {}

            def watch(y):
                if "w" not in watched:
                    # Counted as below (from the latency on), so the run goes on until the
                    # windows the checks read are steady.
                    lat = p.reported_latency_samples
                    watched["w"] = Windows(x[:, RVC_CHUNK:], rate, lat, count_from=lat)
                watched["w"].update(y)
                return not watched["w"].steady() and time.time() - began < SERVE_TIMEOUT + STEADY_SECONDS

            y, rest, latency, moved = stream_settled(p, x, rate, watch)
            if moved:
                print(f"    {rate} Hz: latency {moved[0]} -> {moved[1]} after the state restore; run again")
            block = int(RVC_TIMES["block"] / 1000 * rate)
            assert latency >= 2 * block, f"{rate} Hz: latency {latency} < 2 blocks ({block})"
            latency_ms[rate] = 1000 * latency / rate
            # Only output past the latency counts: a reset (the reset=True call) does not clear
            # the RVC path, so at a rate whose RVC host already ran (the run started again after
            # the latency moved) the first `latency` samples replay audio from before the reset.
            w = Windows(rest, rate, latency, count_from=latency)
            w.update(y)
            assert np.isfinite(y).all(), f"{rate} Hz: non-finite output"
            assert np.abs(y).max() < 2.0, f"{rate} Hz: peak {np.abs(y).max()}"
            assert (y[0] == y[1]).all(), f"{rate} Hz: the channels differ (the RVC path is mono)"
            f = w.first_converted
            assert f is not None, (
                f"{rate} Hz: never converted within {y.shape[1] / rate:.1f} s "
                f"(residual at most {max(w.rel_db):.1f} dB)"
            )
            # Before the voice (and past the latency): the delayed input to the sample (a window
            # of crossfade allowed).
            first_past = -(-latency // w.window)
            worst = max(w.worst[first_past : max(f - 1, 0)], default=0.0)
            assert worst <= 1e-6, f"{rate} Hz: before the voice, output != delayed input ({worst})"
            after = w.rel_db[f + 2 :]
            assert len(after) * RVC_WINDOW >= STEADY_SECONDS - 2 * RVC_WINDOW - 1e-9, (
                f"{rate} Hz: only {len(after) * RVC_WINDOW:.2f} s converted after the first "
                f"converted window (at {f * RVC_WINDOW:.2f} s; the run gives up "
                f"{SERVE_TIMEOUT + STEADY_SECONDS:.0f} s after it starts)"
            )
            assert min(after) > CONVERTED_DB, f"{rate} Hz: fell back to {min(after):.1f} dB"
            print(
                f"    {rate} Hz ({synth}{' + RMVPE' if with_rmvpe else ''}): latency {latency} "
                f"({latency_ms[rate]:.1f} ms), converted after {f * RVC_WINDOW:.2f} s of the "
                f"measured run, residual against the delayed input {np.median(after):.1f} dB "
                f"median, {min(after):.1f} dB lowest over {len(after) * RVC_WINDOW:.1f} s, "
                f"peak {np.abs(y).max():.3f}"
            )
        # ONNX Runtime came from beside the plugin in the bundle (ORT_DYLIB_PATH is unset).
        bundle_dir = os.path.realpath(os.path.join(bundle, "Contents", f"{os.uname().machine}-linux"))
        mapped = onnx_runtimes_mapped()
        assert mapped and all(os.path.dirname(m) == bundle_dir for m in mapped), (bundle_dir, mapped)
        print(f"    ONNX Runtime mapped from {', '.join(mapped)}")
        # The fixed latency depends on the times, not on the rate (up to rounding).
        spread = max(latency_ms.values()) - min(latency_ms.values())
        assert spread < 1.0, f"the latency in ms differs between rates: {latency_ms}"

    @check("a corrupt RVC model: audio passes through, delayed by the reported latency")
    def _():
        models, index = state.get("rvc") or rvc_files(workdir)
        corrupt = os.path.join(workdir, "corrupt_v2_40k.onnx")
        with open(corrupt, "wb") as f:
            f.write(b"\x08\x07this is not an ONNX model")
        p = load(bundle)
        p.raw_state = state_with_rvc(p, models, corrupt, index, None)
        for rate in (48000, 44100):
            x = signal(rate, 3.0, seed=6)
            y, rest, latency, moved = stream_settled(p, x, rate)
            assert moved is None, f"{rate} Hz: the latency moved {moved}"
            w = Windows(rest, rate, latency)
            w.update(y)
            assert y.shape[1] == rest.shape[1] and np.isfinite(y).all()
            assert w.first_converted is None, f"{rate} Hz: converted with a corrupt model?"
            assert max(w.worst) <= 1e-6, f"{rate} Hz: not the delayed input ({max(w.worst)})"
            seconds = y.shape[1] / rate
            print(f"    {rate} Hz: {seconds:.1f} s passed through, delayed by exactly {latency} samples")

    passed = sum(1 for _, ok in RESULTS if ok)
    failed = sum(1 for _, ok in RESULTS if ok is False)
    skipped = len(RESULTS) - passed - failed
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
