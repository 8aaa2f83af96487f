//! The egui editor: parameters, eight voice slots (a knnblend index or an RVC voice: load, what
//! they hold, progress, errors), the shared ContentVec and ONNX Runtime status, and a live meter
//! of query time, CPU share and the RVC worker (time per block, underruns).
//!
//! The editor never blocks: the native file dialog runs on its own thread, loads are handed to
//! the library's loader, and everything shown is polled from atomics or the controller's status.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nice_plug::context::gui::GuiContext;
use nice_plug::prelude::*;
use nice_plug_egui::widgets::ParamSlider;
use nice_plug_egui::{
    create_egui_editor, EguiEditor, EguiEditorState, EguiNiceSettings, NiceEguiApp, RepaintNotifier,
};

use crate::engine::{
    LoadState, RvcState, RvcStatus, RvcTelemetry, RvcVoiceInfo, SlotView, TelemetryView, VoiceInfo,
};
use crate::meter::{MeterReading, ProcessMeter};
use crate::params::{KnnBlendParams, SLOTS};
use crate::slots::{RvcEntry, RvcFile, SlotStore};
use crate::view::{voice_view, ViewContext, ViewState};

const WIDTH: u32 = 820;
const HEIGHT: u32 = 900;
/// The smallest size a host may resize the editor to, logical pixels.
const MIN_WIDTH: u32 = 480;
const MIN_HEIGHT: u32 = 400;
/// How often figures on screen are refreshed while the editor is open.
const REFRESH: Duration = Duration::from_millis(100);
/// Colour of the active slot.
const ACCENT: egui::Color32 = egui::Color32::from_rgb(90, 180, 240);
/// Colour of error lines.
const ERROR: egui::Color32 = egui::Color32::from_rgb(230, 90, 80);
/// Averaging window of the meter.
const METER_WINDOW: Duration = Duration::from_millis(1000);

/// Initial editor size.
pub fn default_state() -> Arc<EguiEditorState> {
    EguiEditorState::from_size(
        nice_plug::editor::dpi::LogicalSize::new(WIDTH as f32, HEIGHT as f32),
        1.0,
    )
}

/// Creates the editor.
pub fn create(
    params: Arc<KnnBlendParams>,
    meter: Arc<ProcessMeter>,
    state: Arc<EguiEditorState>,
) -> Option<EguiEditor<EditorApp>> {
    create_egui_editor(
        state,
        RepaintNotifier::new(),
        // Resizable (the layout scrolls when small), so hosts that ask CLAP's
        // `gui.get_resize_hints` get an answer.
        EguiNiceSettings::new()
            .with_tile("kNN Blend")
            .with_resize_hint(
                nice_plug::prelude::ResizeHint::resizable().with_min_logical_size(
                    nice_plug::editor::dpi::LogicalSize::new(MIN_WIDTH as f32, MIN_HEIGHT as f32),
                ),
            ),
        EditorApp::new(params, meter),
    )
}

/// Editor state that outlives opening and closing the window.
pub struct EditorApp {
    params: Arc<KnnBlendParams>,
    meter: Arc<ProcessMeter>,
    gui_context: Option<GuiContext>,
    view: PanelState,
}

impl EditorApp {
    fn new(params: Arc<KnnBlendParams>, meter: Arc<ProcessMeter>) -> Self {
        Self {
            params,
            meter,
            gui_context: None,
            view: PanelState::default(),
        }
    }
}

impl NiceEguiApp for EditorApp {
    fn build(
        &mut self,
        _egui_ctx: egui::Context,
        nice_gui_ctx: GuiContext,
        _frame: &mut nice_plug_egui::Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        self.gui_context = Some(nice_gui_ctx);
        self.meter.set_enabled(true);
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut nice_plug_egui::Frame) {
        let Some(gui_context) = self.gui_context.clone() else {
            return;
        };
        let setter = gui_context.param_setter();
        panel(ui, &self.params, &self.meter, &setter, &mut self.view);
    }

    fn editor_closed(&mut self) {
        self.gui_context = None;
        self.meter.set_enabled(false);
    }
}

/// Per-window state of the panel (text being typed, meter history, dialog in flight).
#[derive(Default)]
pub struct PanelState {
    typed_paths: [String; SLOTS],
    dialog_open: Arc<AtomicBool>,
    meter: MeterHistory,
    cached: Option<(Instant, Snapshot)>,
    expected: Option<String>,
    /// The audio thread's page-fault count over the last second.
    faults: std::collections::VecDeque<(Instant, u64)>,
    /// The voice view's smoothing and run state.
    voice_view: ViewState,
    band_range_hz: Option<(f32, f32)>,
}

impl PanelState {
    fn expected(&mut self) -> &str {
        self.expected
            .get_or_insert_with(crate::engine::expected_features)
    }
}

/// What the panel shows, polled at most every [`REFRESH`].
#[derive(Clone)]
struct Snapshot {
    slots: Vec<SlotRow>,
    telemetry: TelemetryView,
    reading: MeterReading,
    running: bool,
    rvc: Option<RvcTelemetry>,
    rvc_failure: Option<String>,
    contentvec: Option<String>,
}

/// One slot as displayed.
#[derive(Debug, Clone, PartialEq)]
pub struct SlotRow {
    /// Requested path, if any.
    pub path: Option<String>,
    /// File name to show.
    pub title: String,
    /// What the serving index contains, e.g. "768-d · 40 000 vectors · 3:20 · rvc-v2-768".
    pub contents: Option<String>,
    /// Load progress 0–1 while loading.
    pub progress: Option<f32>,
    /// Error or restore message.
    pub error: Option<String>,
    /// For an RVC slot: its files and the loading stage, if loading.
    pub rvc: Option<(RvcEntry, Option<String>)>,
    /// The index serving in an index slot.
    pub voice: Option<VoiceInfo>,
}

/// Builds the display rows from the slot store and the runtimes' status.
pub fn slot_rows(store: &SlotStore) -> Vec<SlotRow> {
    let control = store.control();
    let rvc_control = store.rvc_control();
    (0..SLOTS)
        .map(|slot| match store.rvc(slot) {
            Some(entry) => rvc_row(
                entry,
                store.contentvec().is_some(),
                store.message(slot),
                rvc_control.as_ref().map(|c| c.status(slot)),
            ),
            None => {
                let path = store.path(slot);
                let view = control.as_ref().map(|c| c.status(slot));
                row(path, store.message(slot), view)
            }
        })
        .collect()
}

fn file_name(p: &str) -> String {
    std::path::Path::new(p)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string())
}

/// The row of an RVC slot.
pub fn rvc_row(
    entry: RvcEntry,
    contentvec: bool,
    message: Option<String>,
    status: Option<RvcStatus>,
) -> SlotRow {
    let title = match (&entry.model, &entry.index) {
        (Some(m), Some(i)) => format!("RVC · {} + {}", file_name(m), file_name(i)),
        (Some(m), None) => format!("RVC · {} (choose its index)", file_name(m)),
        (None, Some(i)) => format!("RVC · {} (choose the model)", file_name(i)),
        (None, None) => "RVC voice · choose a model and its index".to_string(),
    };
    let mut out = SlotRow {
        path: entry.model.clone(),
        title,
        contents: None,
        progress: None,
        error: message,
        rvc: None,
        voice: None,
    };
    let mut stage = None;
    if let Some(status) = status {
        if let Some(info) = &status.info {
            out.contents = Some(describe_rvc(info));
        }
        match status.state {
            RvcState::Loading(what) => stage = Some(what),
            RvcState::Failed(why) => out.error = Some(why),
            RvcState::Standby => {
                stage = Some("checked; opens when this slot is the active voice".to_string())
            }
            RvcState::Empty | RvcState::Ready => {}
        }
    }
    if !contentvec && (entry.model.is_some() || entry.index.is_some()) {
        out.error = Some("choose the ContentVec model (above) to use RVC voices".into());
    }
    out.rvc = Some((entry, stage));
    out
}

/// One line describing an RVC voice.
pub fn describe_rvc(info: &RvcVoiceInfo) -> String {
    let index = match (info.vectors, info.index_type.as_str()) {
        (0, _) => info.index_name.clone(),
        (n, "") => format!("{} ({n} vectors)", info.index_name),
        (n, kind) => format!("{} ({kind}, {n} vectors)", info.index_name),
    };
    format!(
        "{} · {} kHz · {}{}-d · f0 by {} · {index}",
        info.version,
        info.model_rate / 1000,
        if info.f0 { "pitch · " } else { "no pitch · " },
        info.dim,
        match info.f0_method {
            knnblend_rvc::f0::F0Method::Rmvpe => "RMVPE",
            knnblend_rvc::f0::F0Method::Builtin => "the built-in tracker",
        },
    )
}

/// The RVC line: latency, worker time per block against the block, underruns.
pub fn describe_rvc_telemetry(t: &RvcTelemetry, sample_rate: f32) -> String {
    let ms = |samples: usize| samples as f64 * 1000.0 / sample_rate.max(1.0) as f64;
    let mut line = format!("RVC: latency {:.0} ms", ms(t.latency));
    if let Some(slot) = t.serving_slot {
        let worker_ms = t.stream.last_block_ns as f64 / 1e6;
        let block_ms = ms(t.block);
        line.push_str(&format!(
            " · slot {} · worker {worker_ms:.1} ms per {block_ms:.0} ms block",
            slot + 1
        ));
        if block_ms > 0.0 {
            line.push_str(&format!(" ({:.0} %)", 100.0 * worker_ms / block_ms));
        }
    }
    line.push_str(&format!(" · underruns {}", t.stream.underruns));
    if t.model_errors > 0 {
        line.push_str(&format!(" · model errors {}", t.model_errors));
    }
    line
}

fn row(path: Option<String>, message: Option<String>, view: Option<SlotView>) -> SlotRow {
    let mut out = SlotRow {
        title: path
            .as_deref()
            .map(file_name)
            .unwrap_or_else(|| "empty".to_string()),
        path,
        contents: None,
        progress: None,
        error: message,
        rvc: None,
        voice: None,
    };
    if let Some(view) = view {
        if let Some(info) = &view.info {
            out.contents = Some(describe(info));
            out.voice = Some(info.clone());
        }
        match view.state {
            LoadState::Loading { done, total } => {
                out.progress = Some(if total > 0 {
                    (done as f64 / total as f64).clamp(0.0, 1.0) as f32
                } else {
                    0.0
                });
            }
            LoadState::Failed(why) => {
                let serving = view
                    .info
                    .as_ref()
                    .map(|info| format!(" (still serving {})", info.name))
                    .unwrap_or_default();
                out.error = Some(format!("{why}{serving}"));
            }
            LoadState::Empty | LoadState::Ready => {}
        }
    }
    out
}

/// One line describing an index.
pub fn describe(info: &VoiceInfo) -> String {
    let seconds = info.duration_seconds.max(0.0).round() as u64;
    format!(
        "{} · {}-d · {} vectors · {} frames · {}:{:02} · {}{}",
        info.index_type,
        info.dim,
        info.vectors,
        info.frames,
        seconds / 60,
        seconds % 60,
        if info.features.is_empty() {
            "unknown features"
        } else {
            &info.features
        },
        if info.mlocked {
            " · locked in RAM"
        } else {
            " · NOT locked in RAM: it may be paged out and stall the audio (raise the memlock \
             limit, `ulimit -l`)"
        },
    )
}

/// Query-time averages over the last second, from successive telemetry snapshots.
#[derive(Default)]
struct MeterHistory {
    samples: std::collections::VecDeque<(Instant, TelemetryView, MeterReading)>,
}

/// Figures for the meter line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeterFigures {
    /// Average query time in µs over the window (mean of the per-slot last-query samples).
    pub avg_query_us: Option<f64>,
    /// Longest query seen, in µs.
    pub max_query_us: Option<f64>,
    /// Share of real time spent in `process()`.
    pub cpu_share: Option<f64>,
}

impl MeterHistory {
    fn push(&mut self, now: Instant, telemetry: TelemetryView, reading: MeterReading) {
        self.samples.push_back((now, telemetry, reading));
        while self
            .samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > METER_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    fn figures(&self) -> MeterFigures {
        let mut sum = 0.0;
        let mut count = 0u32;
        let mut last_queries = None;
        for (_, telemetry, _) in &self.samples {
            if telemetry.queries > 0 && last_queries != Some(telemetry.queries) {
                sum += telemetry.last_query_ns as f64;
                count += 1;
            }
            last_queries = Some(telemetry.queries);
        }
        let newest = self.samples.back();
        let oldest = self.samples.front();
        MeterFigures {
            avg_query_us: (count > 0).then(|| sum / count as f64 / 1000.0),
            max_query_us: newest
                .map(|(_, t, _)| t.max_query_ns)
                .filter(|&ns| ns > 0)
                .map(|ns| ns as f64 / 1000.0),
            cpu_share: match (oldest, newest) {
                (Some((_, _, a)), Some((_, _, b))) => b.cpu_share_since(a),
                _ => None,
            },
        }
    }
}

/// Draws the whole editor. Public so tests can render it headless.
pub fn panel(
    ui: &mut egui::Ui,
    params: &KnnBlendParams,
    meter: &ProcessMeter,
    setter: &ParamSetter,
    state: &mut PanelState,
) {
    egui::Frame::new()
        .inner_margin(10.0)
        .show(ui, |ui| panel_contents(ui, params, meter, setter, state));
}

fn panel_contents(
    ui: &mut egui::Ui,
    params: &KnnBlendParams,
    meter: &ProcessMeter,
    setter: &ParamSetter,
    state: &mut PanelState,
) {
    ui.ctx().request_repaint_after(REFRESH);
    let now = Instant::now();
    let stale = state
        .cached
        .as_ref()
        .is_none_or(|(at, _)| now.duration_since(*at) >= REFRESH);
    if stale {
        let control = params.slots.control();
        let snapshot = Snapshot {
            slots: slot_rows(&params.slots),
            telemetry: control.as_ref().map(|c| c.telemetry()).unwrap_or_default(),
            reading: meter.read(),
            running: control.is_some(),
            rvc: params.slots.rvc_control().map(|c| c.telemetry()),
            rvc_failure: params.slots.rvc_failure(),
            contentvec: params.slots.contentvec(),
        };
        state.meter.push(now, snapshot.telemetry, snapshot.reading);
        state.cached = Some((now, snapshot));
        if let Some(faults) = meter.audio_thread_page_faults() {
            state.faults.push_back((now, faults));
            while state
                .faults
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > METER_WINDOW)
            {
                state.faults.pop_front();
            }
        }
    }
    let Some((_, snapshot)) = state.cached.clone() else {
        return;
    };
    let active = (params.voice.value().clamp(1, SLOTS as i32) - 1) as usize;

    ui.heading("kNN Blend");
    ui.label(
        egui::RichText::new(format!(
            "Index slots: .kbi or .index files with {}. RVC slots: an RVC model (.onnx) and its \
             added_*.index, with the ContentVec below.",
            state.expected()
        ))
        .small(),
    );
    ui.add_space(4.0);

    egui::Grid::new("params")
        .num_columns(2)
        .spacing([12.0, 6.0])
        .show(ui, |ui| {
            ui.label("Blend");
            ui.add(ParamSlider::for_param(&params.blend, setter).with_width(260.0));
            ui.end_row();
            ui.label("Neighbours");
            ui.add(ParamSlider::for_param(&params.neighbours, setter).with_width(260.0));
            ui.end_row();
            ui.label("Query expansion");
            ui.add(ParamSlider::for_param(&params.expand, setter).with_width(260.0));
            ui.end_row();
            ui.label("Expansion α");
            ui.add(ParamSlider::for_param(&params.expand_alpha, setter).with_width(260.0));
            ui.end_row();
            ui.label("Voice");
            ui.add(ParamSlider::for_param(&params.voice, setter).with_width(260.0));
            ui.end_row();
            ui.label("Crossfade");
            ui.add(ParamSlider::for_param(&params.crossfade_ms, setter).with_width(260.0));
            ui.end_row();
            ui.label("Dry/Wet");
            ui.add(ParamSlider::for_param(&params.dry_wet, setter).with_width(260.0));
            ui.end_row();
            ui.label("Output gain");
            ui.add(ParamSlider::for_param(&params.output_gain_db, setter).with_width(260.0));
            ui.end_row();
            ui.label("Pitch");
            ui.add(ParamSlider::for_param(&params.pitch, setter).with_width(260.0));
            ui.end_row();
            ui.label("Match voice pitch");
            ui.add(ParamSlider::for_param(&params.pitch_match, setter).with_width(260.0));
            ui.end_row();
            ui.label(egui::RichText::new("RVC voices").strong());
            ui.end_row();
            ui.label("Protect");
            ui.add(ParamSlider::for_param(&params.protect, setter).with_width(260.0));
            ui.end_row();
            ui.label("Block");
            ui.add(ParamSlider::for_param(&params.block_ms, setter).with_width(260.0));
            ui.end_row();
            ui.label("Extra context");
            ui.add(ParamSlider::for_param(&params.extra_ms, setter).with_width(260.0));
            ui.end_row();
            ui.label("Block crossfade");
            ui.add(ParamSlider::for_param(&params.sola_ms, setter).with_width(260.0));
            ui.end_row();
        });

    ui.add_space(4.0);
    ui.horizontal(|ui| {
        ui.label("ContentVec");
        let dialog_busy = state.dialog_open.load(Ordering::Acquire);
        if ui
            .add_enabled(!dialog_busy, egui::Button::new("Choose…"))
            .on_hover_text("vec-768-layer-12.onnx for v2 models, vec-256-layer-9.onnx for v1")
            .clicked()
        {
            open_dialog(
                Pick::ContentVec,
                params.slots.clone(),
                state.dialog_open.clone(),
            );
        }
        if ui
            .add_enabled(snapshot.contentvec.is_some(), egui::Button::new("Clear"))
            .clicked()
        {
            let _ = params.slots.set_contentvec(None);
        }
        match &snapshot.contentvec {
            Some(path) => {
                ui.label(file_name(path)).on_hover_text(path);
            }
            None => {
                ui.label(egui::RichText::new("not set (RVC slots need it)").weak());
            }
        }
    });
    if let Some(why) = &snapshot.rvc_failure {
        ui.add(egui::Label::new(egui::RichText::new(why).color(ERROR)).wrap());
    }
    if let Some(rvc) = &snapshot.rvc {
        match &rvc.runtime {
            Some(Ok(runtime)) => {
                ui.label(egui::RichText::new(runtime).small());
            }
            Some(Err(why)) => {
                ui.add(
                    egui::Label::new(
                        egui::RichText::new(format!("RVC voices pass audio through: {why}"))
                            .color(ERROR),
                    )
                    .wrap(),
                );
            }
            None => {}
        }
        if snapshot.slots.iter().any(|row| row.rvc.is_some()) {
            ui.label(describe_rvc_telemetry(rvc, snapshot.reading.sample_rate));
        }
    }

    ui.add_space(6.0);
    let figures = state.meter.figures();
    let fmt = |v: Option<f64>, unit: &str| {
        v.map(|v| format!("{v:.1}{unit}"))
            .unwrap_or_else(|| "–".to_string())
    };
    ui.label(format!(
        "Query time: avg {} · max {}    CPU {}{}",
        fmt(figures.avg_query_us, " µs"),
        fmt(figures.max_query_us, " µs"),
        fmt(figures.cpu_share.map(|s| s * 100.0), " %"),
        if snapshot.telemetry.fading {
            "    crossfading"
        } else {
            ""
        },
    ));
    if !snapshot.running {
        ui.label("Not processing yet: slots load once the host starts the plugin.");
    }
    if let Some(faults) = recent_faults(&state.faults) {
        ui.label(
            egui::RichText::new(format!(
            "The audio thread took {faults} page fault{} in the last second: memory it touches \
             was not resident (swapped out, or an index not locked in RAM); expect dropouts.",
            if faults == 1 { "" } else { "s" }
        ))
            .color(ERROR),
        );
    }
    ui.separator();
    let board = params.slots.view_board();
    let row = snapshot.slots.get(active);
    let ctx = ViewContext {
        voice: row.and_then(|r| r.voice.as_ref()),
        rvc_active: row.is_some_and(|r| r.rvc.is_some()),
        pitch_match: params.pitch_match.value(),
        pitch_semitones: params.pitch.value() as f32,
        band_range_hz: *state
            .band_range_hz
            .get_or_insert_with(crate::engine::band_range_hz),
    };
    voice_view(ui, &mut state.voice_view, &board.read(), &ctx);
    ui.separator();

    egui::ScrollArea::vertical().show(ui, |ui| {
        for (slot, info) in snapshot.slots.iter().enumerate() {
            slot_ui(ui, slot, slot == active, info, &params.slots, state);
            ui.separator();
        }
    });
}

fn slot_ui(
    ui: &mut egui::Ui,
    slot: usize,
    active: bool,
    info: &SlotRow,
    store: &Arc<SlotStore>,
    state: &mut PanelState,
) {
    ui.horizontal(|ui| {
        let mut label = egui::RichText::new(format!("{}", slot + 1)).strong();
        if active {
            label = label.color(ACCENT);
        }
        ui.add_sized([32.0, 18.0], egui::Label::new(label));
        let is_rvc = info.rvc.is_some();
        if ui.selectable_label(!is_rvc, "Index").clicked() && is_rvc {
            store.set_rvc_kind(slot, false);
        }
        if ui
            .selectable_label(is_rvc, "RVC voice")
            .on_hover_text("An RVC model (.onnx), its index and optionally RMVPE")
            .clicked()
            && !is_rvc
        {
            store.set_rvc_kind(slot, true);
        }
        let dialog_busy = state.dialog_open.load(Ordering::Acquire);
        match &info.rvc {
            None => {
                if ui
                    .add_enabled(!dialog_busy, egui::Button::new("Load…"))
                    .on_hover_text("Choose a .kbi or RVC .index file")
                    .clicked()
                {
                    open_dialog(Pick::Index(slot), store.clone(), state.dialog_open.clone());
                }
            }
            Some((entry, _)) => {
                for (label, which) in [
                    ("Model…", RvcFile::Model),
                    ("Index…", RvcFile::Index),
                    ("RMVPE…", RvcFile::Rmvpe),
                ] {
                    let chosen = entry.get(which).as_deref();
                    if ui
                        .add_enabled(!dialog_busy, egui::Button::new(label))
                        .on_hover_text(chosen.unwrap_or("not chosen"))
                        .clicked()
                    {
                        open_dialog(
                            Pick::Rvc(slot, which),
                            store.clone(),
                            state.dialog_open.clone(),
                        );
                    }
                }
            }
        }
        let has_files = info.path.is_some()
            || info
                .rvc
                .as_ref()
                .is_some_and(|(e, _)| *e != RvcEntry::default());
        if ui
            .add_enabled(has_files, egui::Button::new("Clear"))
            .clicked()
        {
            store.clear(slot);
        }
        if active {
            ui.label(egui::RichText::new("active").color(ACCENT).small());
        }
    });
    ui.horizontal(|ui| {
        ui.add_space(36.0);
        ui.label(egui::RichText::new(&info.title).strong())
            .on_hover_text(info.path.as_deref().unwrap_or("no file"));
    });
    if let Some((entry, stage)) = &info.rvc {
        if let Some(rmvpe) = &entry.rmvpe {
            ui.horizontal(|ui| {
                ui.add_space(36.0);
                ui.label(format!("f0: {}", file_name(rmvpe)));
                if ui.small_button("no RMVPE").clicked() {
                    let _ = store.set_rvc_file(slot, RvcFile::Rmvpe, None);
                }
            });
        }
        if let Some(stage) = stage {
            ui.horizontal(|ui| {
                ui.add_space(36.0);
                ui.label(egui::RichText::new(stage).italics());
            });
        }
    }
    ui.horizontal(|ui| {
        ui.add_space(36.0);
        let typed = &mut state.typed_paths[slot];
        let response = ui.add(
            egui::TextEdit::singleline(typed)
                .hint_text("or type a path and press Enter")
                .desired_width(420.0),
        );
        if response.lost_focus()
            && ui.input(|i| i.key_pressed(egui::Key::Enter))
            && !typed.trim().is_empty()
        {
            // In an RVC slot a typed .onnx is the model and anything else the index.
            let path = PathBuf::from(typed.trim());
            let set = match store.rvc(slot) {
                Some(_) => {
                    let which = if path.extension().is_some_and(|e| e == "onnx") {
                        RvcFile::Model
                    } else {
                        RvcFile::Index
                    };
                    store.set_rvc_file(slot, which, Some(&path))
                }
                None => store.set_path(slot, &path),
            };
            if set.is_ok() {
                typed.clear();
            }
        }
    });
    if let Some(contents) = &info.contents {
        ui.horizontal(|ui| {
            ui.add_space(36.0);
            ui.label(contents);
        });
    }
    if let Some(progress) = info.progress {
        ui.horizontal(|ui| {
            ui.add_space(36.0);
            ui.add(
                egui::ProgressBar::new(progress)
                    .desired_width(420.0)
                    .show_percentage(),
            );
        });
    }
    if let Some(error) = &info.error {
        ui.horizontal(|ui| {
            ui.add_space(36.0);
            ui.add(egui::Label::new(egui::RichText::new(error).color(ERROR)).wrap());
        });
    }
}

/// What a file dialog chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    /// An index slot's index.
    Index(usize),
    /// One file of an RVC slot.
    Rvc(usize, RvcFile),
    /// The shared ContentVec.
    ContentVec,
}

impl Pick {
    fn title(self) -> String {
        match self {
            Pick::Index(slot) => format!("Load voice into slot {}", slot + 1),
            Pick::Rvc(slot, RvcFile::Model) => format!("RVC model (.onnx) for slot {}", slot + 1),
            Pick::Rvc(slot, RvcFile::Index) => format!("RVC index for slot {}", slot + 1),
            Pick::Rvc(slot, RvcFile::Rmvpe) => format!("RMVPE (rmvpe.onnx) for slot {}", slot + 1),
            Pick::ContentVec => "ContentVec (vec-768-layer-12.onnx or vec-256-layer-9.onnx)".into(),
        }
    }

    fn filter(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Pick::Index(_) | Pick::Rvc(_, RvcFile::Index) => ("Voice index", &["kbi", "index"]),
            _ => ("ONNX model", &["onnx"]),
        }
    }

    fn current(self, store: &SlotStore) -> Option<String> {
        match self {
            Pick::Index(slot) => store.path(slot),
            Pick::Rvc(slot, which) => store.rvc(slot).and_then(|e| e.get(which).clone()),
            Pick::ContentVec => store.contentvec(),
        }
    }

    fn apply(self, store: &SlotStore, file: &std::path::Path) -> Result<(), String> {
        match self {
            Pick::Index(slot) => store.set_path(slot, file),
            Pick::Rvc(slot, which) => store.set_rvc_file(slot, which, Some(file)),
            Pick::ContentVec => store.set_contentvec(Some(file)),
        }
    }
}

/// Page faults of the audio thread between the oldest and newest reading of the window, when
/// there were any.
fn recent_faults(history: &std::collections::VecDeque<(Instant, u64)>) -> Option<u64> {
    let (first, last) = (history.front()?, history.back()?);
    let faults = last.1.saturating_sub(first.1);
    (faults > 0).then_some(faults)
}

/// Runs the native file dialog on its own thread; the chosen file goes to the slot store, which
/// hands it to the library's loader.
fn open_dialog(pick: Pick, store: Arc<SlotStore>, busy: Arc<AtomicBool>) {
    if busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let start_dir = pick
        .current(&store)
        .or_else(|| store.contentvec())
        .and_then(|p| std::path::Path::new(&p).parent().map(|d| d.to_path_buf()));
    let spawned = std::thread::Builder::new()
        .name("knnblend-file-dialog".into())
        .spawn({
            let busy = busy.clone();
            move || {
                let (name, extensions) = pick.filter();
                let mut dialog = rfd::FileDialog::new()
                    .set_title(pick.title())
                    .add_filter(name, extensions)
                    .add_filter("All files", &["*"]);
                if let Some(dir) = start_dir {
                    dialog = dialog.set_directory(dir);
                }
                if let Some(file) = dialog.pick_file() {
                    // A refused path leaves its reason in the slot's message.
                    let _ = pick.apply(&store, &file);
                }
                busy.store(false, Ordering::Release);
            }
        });
    if spawned.is_err() {
        busy.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoHost;

    impl nice_plug::prelude::GuiContextInner for NoHost {
        fn plugin_api(&self) -> PluginApi {
            PluginApi::Clap
        }
        unsafe fn raw_begin_set_parameter(&self, _param: ParamPtr) {}
        unsafe fn raw_set_parameter_normalized(&self, _param: ParamPtr, _normalized: f32) {}
        unsafe fn raw_end_set_parameter(&self, _param: ParamPtr) {}
        fn get_state(&self) -> PluginState {
            unimplemented!("not used by the panel")
        }
        fn set_state(&self, _state: PluginState) {}
        fn request_restart(&self) {}
    }

    #[test]
    fn panel_renders_headless_repeatedly() {
        let params = KnnBlendParams::default();
        params
            .slots
            .set_path(2, std::path::Path::new("/nonexistent/voice.kbi"))
            .unwrap();
        params
            .slots
            .set_rvc_file(
                3,
                RvcFile::Model,
                Some(std::path::Path::new("/m/voice.onnx")),
            )
            .unwrap();
        params.slots.set_rvc_kind(4, true);
        let meter = ProcessMeter::default();
        let host = NoHost;
        let setter = ParamSetter::new(&host);
        // Opening and closing the editor: a fresh panel state and context each time.
        for _ in 0..3 {
            let ctx = egui::Context::default();
            let mut state = PanelState::default();
            for _ in 0..3 {
                let mut output = ctx.run_ui(egui::RawInput::default(), |ui| {
                    panel(ui, &params, &meter, &setter, &mut state);
                });
                output.textures_delta.clear();
            }
        }
    }

    #[test]
    fn rows_show_progress_errors_and_contents() {
        let info = VoiceInfo {
            name: "alto.kbi".into(),
            path: "/v/alto.kbi".into(),
            index_type: "IVF-Flat".into(),
            dim: 768,
            vectors: 40_000,
            lists: 256,
            frames: 40_000,
            duration_seconds: 200.0,
            features: "rvc-v2-768".into(),
            mlocked: true,
            pitch: None,
            median_f0_hz: None,
        };
        let r = row(
            Some("/v/new.kbi".into()),
            None,
            Some(SlotView {
                state: LoadState::Failed("checksum mismatch".into()),
                info: Some(info.clone()),
            }),
        );
        assert_eq!(r.title, "new.kbi");
        assert_eq!(
            r.contents.as_deref(),
            Some(
                "IVF-Flat · 768-d · 40000 vectors · 40000 frames · 3:20 · rvc-v2-768 · locked \
                 in RAM"
            )
        );
        assert_eq!(
            r.error.as_deref(),
            Some("checksum mismatch (still serving alto.kbi)")
        );
        let r = row(
            Some("/v/a.kbi".into()),
            None,
            Some(SlotView {
                state: LoadState::Loading {
                    done: 50,
                    total: 200,
                },
                info: None,
            }),
        );
        assert_eq!(r.progress, Some(0.25));
        let unlocked = VoiceInfo {
            mlocked: false,
            ..info.clone()
        };
        assert!(describe(&unlocked).contains("NOT locked in RAM"));
        let r = row(None, Some("restored badly".into()), None);
        assert_eq!(r.title, "empty");
        assert_eq!(r.error.as_deref(), Some("restored badly"));
    }

    #[test]
    fn rvc_line_names_the_index_type_once_loaded() {
        let mut info = RvcVoiceInfo {
            model: PathBuf::from("alice.onnx"),
            version: "v2",
            model_rate: 40_000,
            f0: true,
            dim: 768,
            f0_method: knnblend_rvc::f0::F0Method::Rmvpe,
            index_name: "added_alice.index".into(),
            index_path: PathBuf::from("added_alice.index"),
            index_type: String::new(),
            vectors: 0,
            lists: 0,
        };
        assert_eq!(
            describe_rvc(&info),
            "v2 · 40 kHz · pitch · 768-d · f0 by RMVPE · added_alice.index"
        );
        info.vectors = 30_000;
        info.index_type = "IVF1024,PQ128x4fs,RFlat (IVF-PQ FastScan, k_factor 1)".into();
        assert!(
            describe_rvc(&info).ends_with(
                "added_alice.index (IVF1024,PQ128x4fs,RFlat (IVF-PQ FastScan, k_factor 1), \
                 30000 vectors)"
            ),
            "{}",
            describe_rvc(&info)
        );
    }

    #[test]
    fn audio_thread_faults_warn_only_when_they_grow() {
        let t0 = Instant::now();
        let mut history = std::collections::VecDeque::new();
        assert_eq!(recent_faults(&history), None);
        history.push_back((t0, 10));
        history.push_back((t0 + Duration::from_millis(500), 10));
        assert_eq!(recent_faults(&history), None);
        history.push_back((t0 + Duration::from_millis(900), 13));
        assert_eq!(recent_faults(&history), Some(3));
    }

    #[test]
    fn meter_averages_new_queries_only() {
        let mut history = MeterHistory::default();
        let t0 = Instant::now();
        let mut telemetry = TelemetryView::default();
        let reading = |samples, busy_ns| MeterReading {
            busy_ns,
            samples,
            sample_rate: 48_000.0,
        };
        for (i, (queries, last)) in [(1, 10_000), (1, 10_000), (5, 30_000)].iter().enumerate() {
            telemetry.queries = *queries;
            telemetry.last_query_ns = *last;
            telemetry.max_query_ns = 50_000;
            history.push(
                t0 + Duration::from_millis(100 * i as u64),
                telemetry,
                reading(4800 * i as u64, 10_000_000 * i as u64),
            );
        }
        let f = history.figures();
        assert_eq!(f.avg_query_us, Some(20.0));
        assert_eq!(f.max_query_us, Some(50.0));
        // 20 ms busy for 200 ms of audio.
        assert!((f.cpu_share.unwrap() - 0.1).abs() < 1e-9);
        assert_eq!(MeterHistory::default().figures().avg_query_us, None);
    }
}
