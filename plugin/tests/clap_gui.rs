//! The editor in a real X11 window through the CLAP gui extension: embedded in a host window,
//! opened and closed repeatedly while audio is processed, its window really appearing as a child
//! of the host's, answering the resize-hints query, painting (a PNG of it is saved each run),
//! and taking synthetic mouse input (xdotool drags the Blend slider; the host's saved state
//! shows the new value). A voice built from the project's synthesiser serves slot 1 with Match
//! voice pitch on and a synthesised low voice as input, so the editor's voice view (envelopes,
//! match meter, f0) has something to draw, and the screenshot must show the blended envelope.
//!
//! Needs `target/bundled/knnblend.clap` and an X server: `DISPLAY`, or `Xvfb` on the path (the
//! test starts one). Without either it skips (`tests/skip`): it fails under `CI=true`, and
//! elsewhere passes with a `KNNBLEND-SKIPPED:` line that `cargo xtask test` reports.

#[path = "../../tests/skip/mod.rs"]
mod skip;
#[path = "common/voice.rs"]
mod voice;

use std::cell::Cell;
use std::ffi::CStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clack_extensions::gui::{
    GuiApiType, GuiConfiguration, HostGui, HostGuiImpl, PluginGui, Window,
};
use clack_host::prelude::*;
use knnblend::voice::synth::{synth_voice, VoiceParams};
use x11_dl::xlib;

/// The blended envelope's colour in the editor's voice view.
const BLEND_COLOUR: [u8; 3] = {
    let [r, g, b, _] = knnblend_plugin::view::BLEND_COLOUR.to_array();
    [r, g, b]
};

const PLUGIN_ID: &CStr = c"org.knnblend.knn-blend";

#[derive(Default)]
struct Shared {
    callback_requested: AtomicBool,
    gui: OnceLock<Option<PluginGui>>,
    state: OnceLock<Option<clack_extensions::state::PluginState>>,
}

impl<'a> SharedHandler<'a> for Shared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.gui.set(instance.get_extension());
        let _ = self.state.set(instance.get_extension());
    }
    fn request_restart(&self) {}
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::SeqCst);
    }
}

impl HostGuiImpl for Shared {
    fn resize_hints_changed(&self) {}
    fn request_resize(&self, _new_size: clack_extensions::gui::GuiSize) -> Result<(), HostError> {
        Ok(())
    }
    fn request_show(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn request_hide(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn closed(&self, _was_destroyed: bool) {}
}

struct MainThread {
    _unused: Cell<()>,
}

impl<'a> MainThreadHandler<'a> for MainThread {}

impl clack_extensions::state::HostStateImpl for MainThread {
    fn mark_dirty(&self) {}
}

struct GuiHost;

impl HostHandlers for GuiHost {
    type Shared<'a> = Shared;
    type MainThread<'a> = MainThread;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        builder
            .register::<HostGui>()
            .register::<clack_extensions::state::HostState>();
    }
}

fn bundle_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KNNBLEND_CLAP_BUNDLE") {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bundled/knnblend.clap");
    path.exists().then_some(path)
}

/// An X server for the test: the existing `DISPLAY`, or a private Xvfb.
struct XServer {
    child: Option<Child>,
}

impl XServer {
    fn start() -> Option<XServer> {
        if std::env::var_os("DISPLAY").is_some() {
            return Some(XServer { child: None });
        }
        // Xvfb picks a free display and writes its number to stdout once it accepts clients.
        let mut child = Command::new("Xvfb")
            .args([
                "-displayfd",
                "1",
                "-screen",
                "0",
                "1280x1024x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let stdout = child.stdout.take()?;
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).ok()?;
        let number: u32 = line.trim().parse().ok()?;
        // This test binary holds only this test, so no other thread reads the environment.
        std::env::set_var("DISPLAY", format!(":{number}"));
        Some(XServer { child: Some(child) })
    }
}

impl Drop for XServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            // SIGTERM lets Xvfb remove its lock file and socket.
            // SAFETY: signalling our own child process.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let _ = child.wait();
        }
    }
}

/// The host's window, which the editor embeds itself into.
struct HostWindow {
    xlib: xlib::Xlib,
    display: *mut xlib::Display,
    window: xlib::Window,
    /// Where the next [`painted_fraction`](Self::painted_fraction) saves a PNG of the window.
    screenshot: Cell<Option<PathBuf>>,
}

impl HostWindow {
    fn open() -> Option<HostWindow> {
        let xlib = xlib::Xlib::open().ok()?;
        // SAFETY: plain Xlib calls on a display this struct owns.
        unsafe {
            let display = (xlib.XOpenDisplay)(std::ptr::null());
            if display.is_null() {
                return None;
            }
            let screen = (xlib.XDefaultScreen)(display);
            let root = (xlib.XRootWindow)(display, screen);
            let window = (xlib.XCreateSimpleWindow)(display, root, 0, 0, 900, 800, 0, 0, 0);
            (xlib.XMapWindow)(display, window);
            (xlib.XSync)(display, 0);
            Some(HostWindow {
                xlib,
                display,
                window,
                screenshot: Cell::new(None),
            })
        }
    }

    fn children(&self) -> u32 {
        // SAFETY: querying our own window; the returned list is freed with XFree.
        unsafe {
            (self.xlib.XSync)(self.display, 0);
            let (mut root, mut parent) = (0, 0);
            let mut children: *mut xlib::Window = std::ptr::null_mut();
            let mut count = 0u32;
            (self.xlib.XQueryTree)(
                self.display,
                self.window,
                &mut root,
                &mut parent,
                &mut children,
                &mut count,
            );
            if !children.is_null() {
                (self.xlib.XFree)(children.cast());
            }
            count
        }
    }
}

impl HostWindow {
    /// The top-left `w`×`h` of the host window as 8-bit RGB (saved as a PNG when
    /// [`screenshot`](Self::screenshot) is set).
    fn capture(&self, w: u32, h: u32) -> Vec<u8> {
        // SAFETY: reading our own window's pixels; the image is destroyed with XDestroyImage.
        let rgb = unsafe {
            (self.xlib.XSync)(self.display, 0);
            let image =
                (self.xlib.XGetImage)(self.display, self.window, 0, 0, w, h, !0, xlib::ZPixmap);
            if image.is_null() {
                return vec![0; (w * h * 3) as usize];
            }
            let get_pixel = (*image).funcs.get_pixel.expect("XGetPixel");
            let mut rgb = Vec::with_capacity((w * h * 3) as usize);
            for y in 0..h as i32 {
                for x in 0..w as i32 {
                    let p = get_pixel(image, x, y);
                    rgb.extend_from_slice(&[(p >> 16) as u8, (p >> 8) as u8, p as u8]);
                }
            }
            let destroy = (*image).funcs.destroy_image.expect("XDestroyImage");
            destroy(image);
            rgb
        };
        if let Some(path) = self.screenshot.take() {
            // A PNG of the host window with the editor in it (the test run's screenshot).
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&path, png_rgb(w, h, &rgb)).expect("write the screenshot");
            println!("screenshot of the editor: {}", path.display());
        }
        rgb
    }
}

/// Fraction of pixels of `rgb` that are not black (the host window's own background): how
/// much of it the editor painted.
fn painted_fraction(rgb: &[u8]) -> f64 {
    let px = rgb.chunks_exact(3);
    let n = px.len().max(1);
    px.filter(|p| p.iter().any(|&c| c != 0)).count() as f64 / n as f64
}

/// Pixels of `rgb` within 40 of `colour` in every channel.
fn pixels_near(rgb: &[u8], colour: [u8; 3]) -> usize {
    rgb.chunks_exact(3)
        .filter(|p| p.iter().zip(colour).all(|(&a, b)| a.abs_diff(b) <= 40))
        .count()
}

/// A PNG of `w`×`h` 8-bit RGB pixels, written with stored (uncompressed) deflate blocks: no
/// encoder crate needed for a test's screenshot.
fn png_rgb(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut c = !0u32;
        for &b in data {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut raw = Vec::with_capacity(rgb.len() + h as usize);
    for row in rgb.chunks_exact(w as usize * 3) {
        raw.push(0); // filter: none
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks = raw.chunks(65_535).count();
    for (i, block) in raw.chunks(65_535).enumerate() {
        z.push(u8::from(i + 1 == blocks));
        z.extend_from_slice(&(block.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(block.len() as u16)).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &v in &raw {
        a = (a + v as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

impl Drop for HostWindow {
    fn drop(&mut self) {
        // SAFETY: our own window and display.
        unsafe {
            (self.xlib.XDestroyWindow)(self.display, self.window);
            (self.xlib.XCloseDisplay)(self.display);
        }
    }
}

/// Runs `xdotool ARGS` on the test's display (`cargo xtask setup` installs it).
fn xdotool(args: &[&str]) {
    let out = Command::new("xdotool")
        .args(args)
        .output()
        .expect("xdotool runs (cargo xtask setup installs the xdotool package)");
    assert!(
        out.status.success(),
        "xdotool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn pump(instance: &mut PluginInstance<GuiHost>, for_how_long: Duration) {
    let end = Instant::now() + for_how_long;
    while Instant::now() < end {
        if instance.access_shared_handler(|s| s.callback_requested.swap(false, Ordering::SeqCst)) {
            instance.call_on_main_thread_callback();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Processes `blocks` blocks of 256 frames of `signal` (looped, on the left channel).
fn process_some(
    processor: StoppedPluginAudioProcessor<GuiHost>,
    blocks: usize,
    signal: &[f32],
) -> StoppedPluginAudioProcessor<GuiHost> {
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut processor = processor.start_processing().expect("start processing");
                let mut in_ports = AudioPorts::with_capacity(2, 1);
                let mut out_ports = AudioPorts::with_capacity(2, 1);
                let mut input = vec![vec![0.0f32; 256]; 2];
                let mut output = vec![vec![0.0f32; 256]; 2];
                for block in 0..blocks {
                    for (i, s) in input[0].iter_mut().enumerate() {
                        *s = signal[(block * 256 + i) % signal.len()];
                    }
                    let inputs = in_ports.with_input_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_input_only(
                            input.iter_mut().map(InputChannel::variable),
                        ),
                    }]);
                    let mut outputs = out_ports.with_output_buffers([AudioPortBuffer {
                        latency: 0,
                        channels: AudioPortBufferType::f32_output_only(
                            output.iter_mut().map(|b| b.as_mut_slice()),
                        ),
                    }]);
                    processor
                        .process(
                            &inputs,
                            &mut outputs,
                            &InputEvents::empty(),
                            &mut OutputEvents::void(),
                            None,
                            None,
                        )
                        .expect("process");
                    assert!(output.iter().flatten().all(|x| x.is_finite()));
                }
                processor.stop_processing()
            })
            .join()
            .expect("audio thread")
    })
}

#[test]
fn editor_opens_and_closes_repeatedly_in_a_host_window() {
    let Some(bundle) = bundle_path() else {
        return skip::skip(
            "target/bundled/knnblend.clap does not exist",
            "run `cargo xtask test`, or `cargo xtask bundle knnblend-plugin` first",
        );
    };
    let Some(_server) = XServer::start() else {
        return skip::skip(
            "no DISPLAY and no Xvfb to start",
            "run `cargo xtask setup`, which installs the xvfb package",
        );
    };
    let Some(host_window) = HostWindow::open() else {
        return skip::skip(
            "cannot open the X display",
            "check DISPLAY, or unset it so the test starts its own Xvfb",
        );
    };

    // SAFETY: loading the bundle under test.
    let entry = unsafe { PluginEntry::load(&bundle) }.expect("load the CLAP bundle");
    let host_info = HostInfo::new(
        "knnblend gui test host",
        "knnblend",
        "https://crates.io",
        "0.1.0",
    )
    .unwrap();
    let mut instance = PluginInstance::<GuiHost>::new(
        |_| Shared::default(),
        |_| MainThread {
            _unused: Cell::new(()),
        },
        &entry,
        PLUGIN_ID,
        &host_info,
    )
    .expect("instantiate");
    let gui = instance
        .access_shared_handler(|s| *s.gui.get().unwrap())
        .expect("the plugin has an editor");
    let mut processor = Some(
        instance
            .activate(
                |_, _| (),
                PluginAudioConfiguration {
                    sample_rate: 48_000.0,
                    min_frames_count: 1,
                    max_frames_count: 1024,
                },
            )
            .expect("activate"),
    );

    assert!(gui.is_api_supported(
        &instance.plugin_handle(),
        GuiConfiguration {
            api_type: GuiApiType::X11,
            is_floating: false
        }
    ));
    // Something to show: a voice serving slot 1 (the synthesiser's high voice, with pitch
    // statistics), one slot with a missing file, one with a file that is not an index; a low
    // voice as input.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("not-an-index.kbi");
    std::fs::write(&garbage, b"garbage").unwrap();
    let voice = voice::make_voice_with_pitch(dir.path(), "high.kbi", true);
    let singer = synth_voice(&VoiceParams::low().with_seed(3), 48_000.0, 4.0);
    let state = instance
        .access_shared_handler(|s| *s.state.get().unwrap())
        .expect("state extension");
    let mut saved = Vec::new();
    state.save(&instance.plugin_handle(), &mut saved).unwrap();
    let len = u64::from_le_bytes(saved[..8].try_into().unwrap()) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&saved[8..8 + len]).unwrap();
    json["fields"]["slots"] = serde_json::Value::String(
        serde_json::json!({"version": 1, "slots": [voice, "/no/such/voice.kbi", garbage]})
            .to_string(),
    );
    json["params"]["pitch_match"] = serde_json::json!({ "bool": true });
    let bytes = serde_json::to_vec(&json).unwrap();
    let mut blob = (bytes.len() as u64).to_le_bytes().to_vec();
    blob.extend_from_slice(&bytes);
    state
        .load(&instance.plugin_handle(), &mut std::io::Cursor::new(blob))
        .expect("load state");

    // The voice loads off-thread; a moment of audio and main-thread callbacks lets it arrive.
    for _ in 0..10 {
        pump(&mut instance, Duration::from_millis(50));
        processor = Some(process_some(processor.take().unwrap(), 10, &singer));
    }
    for round in 0..5 {
        let config = GuiConfiguration {
            api_type: GuiApiType::X11,
            is_floating: false,
        };
        gui.create(&instance.plugin_handle(), config)
            .expect("create the editor");
        let size = gui
            .get_size(&instance.plugin_handle())
            .expect("editor size");
        assert!(size.width >= 400 && size.height >= 300, "{size:?}");
        // The resize-hints query gets an answer (qtractor logged "could not get the resize
        // hints of the plugin GUI" when it did not).
        let hints = gui
            .get_resize_hints(&instance.plugin_handle())
            .expect("the editor answers gui.get_resize_hints");
        assert!(
            hints.can_resize_horizontally && hints.can_resize_vertically,
            "{hints:?}"
        );
        // SAFETY: the host window outlives the editor (destroyed below, before the window).
        unsafe {
            gui.set_parent(
                &instance.plugin_handle(),
                Window::from_x11_handle(host_window.window),
            )
        }
        .expect("embed the editor");
        gui.show(&instance.plugin_handle()).expect("show");
        // Audio keeps running while the editor is open.
        processor = Some(process_some(processor.take().unwrap(), 200, &singer));
        pump(&mut instance, Duration::from_millis(300));
        assert!(
            host_window.children() >= 1,
            "round {round}: the editor window did not appear in the host window"
        );
        if round == 0 {
            // The test run's screenshot of the editor (KNNBLEND_GUI_SNAPSHOT picks the path).
            let path = std::env::var_os("KNNBLEND_GUI_SNAPSHOT").map_or_else(
                || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots/editor.png"),
                PathBuf::from,
            );
            host_window.screenshot.set(Some(path));
        }
        let rgb = host_window.capture(size.width.min(900), size.height.min(800));
        let painted = painted_fraction(&rgb);
        if round == 0 {
            // The voice view drew the blended envelope of the processed audio (its colour is
            // used nowhere else in the editor).
            let line = pixels_near(&rgb, BLEND_COLOUR);
            println!("the blended envelope covers {line} pixels");
            assert!(
                line >= 150,
                "the voice view shows no blended envelope ({line} pixels of its colour)"
            );
        }
        assert!(
            painted > 0.05,
            "round {round}: the editor painted only {:.0} % of its area",
            painted * 100.0
        );
        println!(
            "round {round}: editor painted {:.0} % of its area",
            painted * 100.0
        );
        if round == 0 {
            // Synthetic X input: drag the Blend slider from 75 % down towards 20 %; the host
            // sees the new value in the plugin's saved state.
            let blend = |instance: &mut PluginInstance<GuiHost>| -> f64 {
                let mut saved = Vec::new();
                state.save(&instance.plugin_handle(), &mut saved).unwrap();
                let len = u64::from_le_bytes(saved[..8].try_into().unwrap()) as usize;
                let json: serde_json::Value = serde_json::from_slice(&saved[8..8 + len]).unwrap();
                json["params"]["blend"]["f32"]
                    .as_f64()
                    .expect("blend in the state")
            };
            let before = blend(&mut instance);
            // The Blend slider's track spans x 123..383 at y 62 of the editor (see the
            // screenshot); the editor sits at the host window's origin, at the screen's.
            xdotool(&["mousemove", "300", "62", "mousedown", "1"]);
            for x in [280, 240, 200, 176] {
                pump(&mut instance, Duration::from_millis(40));
                xdotool(&["mousemove", &x.to_string(), "62"]);
            }
            xdotool(&["mouseup", "1"]);
            pump(&mut instance, Duration::from_millis(300));
            processor = Some(process_some(processor.take().unwrap(), 20, &singer));
            pump(&mut instance, Duration::from_millis(100));
            let after = blend(&mut instance);
            println!("dragging the Blend slider: {before:.2} -> {after:.2}");
            assert!(
                (before - 0.75).abs() < 1e-6 && after < 0.45,
                "the drag did not reach the parameter: Blend {before} -> {after}"
            );
        }
        gui.hide(&instance.plugin_handle()).expect("hide");
        gui.destroy(&instance.plugin_handle());
        pump(&mut instance, Duration::from_millis(100));
        processor = Some(process_some(processor.take().unwrap(), 50, &singer));
    }
    instance.deactivate(processor.take().unwrap());
    drop(instance);
    println!("editor opened and closed 5 times in a host window");
}
