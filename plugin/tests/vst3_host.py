#!/usr/bin/env python3
"""The bundled VST3 plugin in a real host (pedalboard, JUCE's VST3 hosting).

Usage: vst3_host.py path/to/knnblend.vst3

Loads the plugin, lists its parameters, processes audio at 44.1/48/96 kHz and several block
sizes, applies parameter changes, restores a state naming a voice and waits for that voice to
serve, saves the state and restores it into a fresh instance (same voice, same output), and
feeds hostile state. A test voice is built with the library through the plugin crate's
`make_test_voice` example (set KNNBLEND_TEST_VOICE to use an existing .kbi instead).

Prints one line per check and finally exactly `N passed, N failed`; exits non-zero on failure.
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
    "voice": "Voice",
    "crossfade_ms": "Crossfade",
    "dry_wet": "Dry/Wet",
    "output_gain_db": "Output Gain",
}

RESULTS = []


def check(name):
    """Decorator: runs the check, records pass/fail, never stops the run."""

    def wrap(fn):
        start = time.time()
        try:
            fn()
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


# --- the checks ---------------------------------------------------------------------------------


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    bundle = sys.argv[1]
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

    passed = sum(1 for _, ok in RESULTS if ok)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
