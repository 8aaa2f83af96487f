//! The C ABI called from Rust: every class of bad input gives its code and a message, loads
//! are followed to completion through tickets, and searches and blends equal the Rust API's
//! bit for bit. A counting allocator shows error paths free what they allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use knnblend_core::index::{BlendParams, IvfIndex, Searcher};

use super::*;
use crate::error::{control, Error};

#[path = "../tests/support/mod.rs"]
mod support;
use support::*;

/// The IVF-PQ FastScan index type through the ABI.
mod pq;

// ---- a per-thread count of live heap bytes, to show error paths leak nothing ----

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
}

fn add(n: i64) {
    let _ = LIVE.try_with(|c| c.set(c.get() + n));
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        add(l.size() as i64);
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        add(l.size() as i64);
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        add(n as i64 - l.size() as i64);
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        add(-(l.size() as i64));
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes `f` left allocated on this thread.
fn net_bytes(f: impl FnOnce()) -> i64 {
    let before = LIVE.with(|c| c.get());
    f();
    LIVE.with(|c| c.get()) - before
}

// ---- helpers ----

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn cpath(p: &Path) -> CString {
    cstr(p.to_str().unwrap())
}

/// Runs a control-side call with an error out-parameter; returns its code and the message
/// it reported (the error is checked to carry the same code, then freed).
fn call(f: impl FnOnce(*mut *mut kb_error) -> kb_status) -> (kb_status, Option<String>) {
    let mut err: *mut kb_error = null_mut();
    let code = f(&mut err);
    if err.is_null() {
        return (code, None);
    }
    // SAFETY: a live error from the library.
    unsafe {
        assert_eq!(kb_error_code(err), code, "the error's code is the call's");
        let m = CStr::from_ptr(kb_error_message(err))
            .to_str()
            .unwrap()
            .to_string();
        kb_error_free(&mut err);
        assert!(err.is_null(), "kb_error_free nulls the pointer");
        (code, Some(m))
    }
}

/// Expects `code` and a message containing every one of `words`.
#[track_caller]
fn expect(got: (kb_status, Option<String>), code: kb_status, words: &[&str]) {
    assert_eq!(got.0, code, "message: {:?}", got.1);
    if code == KB_OK {
        assert!(got.1.is_none(), "an error object on success: {:?}", got.1);
        return;
    }
    let m = got
        .1
        .unwrap_or_else(|| panic!("{code:?} came without a message"));
    assert!(!m.is_empty());
    for w in words {
        assert!(m.contains(w), "message {m:?} lacks {w:?}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

struct Files {
    _dir: tempfile::TempDir,
    kbi: PathBuf,
    faiss: PathBuf,
    other_dim: PathBuf,
    garbage: PathBuf,
    truncated: PathBuf,
    dir: PathBuf,
}

const D: usize = 160;

fn files() -> (Files, knnblend_core::format::IndexParts) {
    let dir = tempfile::tempdir().unwrap();
    let a = rvc_parts(1, D, 1500, 24, "rvc-test-160");
    let b = rvc_parts(2, D, 1200, 20, "");
    let c = rvc_parts(3, 48, 300, 6, "narrow");
    let p = |n: &str| dir.path().join(n);
    write_kbi_file(&p("a.kbi"), &a);
    write_faiss_file(&p("added_IVF20_Flat_nprobe_1_b_v2.index"), &b);
    write_kbi_file(&p("narrow.kbi"), &c);
    std::fs::write(p("garbage.index"), b"this is not an index at all").unwrap();
    let bytes = std::fs::read(p("a.kbi")).unwrap();
    std::fs::write(p("truncated.kbi"), &bytes[..bytes.len() / 2]).unwrap();
    let f = Files {
        kbi: p("a.kbi"),
        faiss: p("added_IVF20_Flat_nprobe_1_b_v2.index"),
        other_dim: p("narrow.kbi"),
        garbage: p("garbage.index"),
        truncated: p("truncated.kbi"),
        dir: dir.path().to_path_buf(),
        _dir: dir,
    };
    (f, a)
}

fn open(path: &Path) -> *mut kb_index {
    let mut ix = null_mut();
    // SAFETY: valid pointers.
    let got = call(|e| unsafe { kb_index_open(cpath(path).as_ptr(), 0, &mut ix, e) });
    expect(got, KB_OK, &[]);
    ix
}

fn new_searcher() -> *mut kb_searcher {
    let mut s = null_mut();
    // SAFETY: valid pointers.
    expect(call(|e| unsafe { kb_searcher_new(&mut s, e) }), KB_OK, &[]);
    s
}

fn config(slots: usize, max_dim: usize) -> kb_live_config {
    kb_live_config {
        slots,
        max_dim,
        ..kb_live_config_default()
    }
}

fn new_live(c: &kb_live_config) -> (*mut kb_controller, *mut kb_audio) {
    let (mut ctl, mut audio) = (null_mut(), null_mut());
    // SAFETY: valid pointers.
    expect(
        call(|e| unsafe { kb_live_new(c, &mut ctl, &mut audio, e) }),
        KB_OK,
        &[],
    );
    (ctl, audio)
}

/// Polls a ticket until the load ends (as a host's timer would), returning the last status,
/// the poll's code and message.
fn poll(t: *const kb_ticket) -> (kb_ticket_status, kb_status, Option<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut st = std::mem::MaybeUninit::<kb_ticket_status>::uninit();
        // SAFETY: valid pointers.
        let (code, m) = call(|e| unsafe { kb_ticket_poll(t, st.as_mut_ptr(), e) });
        // SAFETY: written by every poll that did not fail on its arguments.
        let st = unsafe { st.assume_init() };
        if st.state != kb_load_state::KB_LOAD_PENDING {
            return (st, code, m);
        }
        assert_eq!(code, KB_OK);
        assert!(Instant::now() < deadline, "the load never finished");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn load(ctl: *const kb_controller, slot: usize, path: &Path) -> *mut kb_ticket {
    let mut t = null_mut();
    // SAFETY: valid pointers.
    let got = call(|e| unsafe { kb_controller_load(ctl, slot, cpath(path).as_ptr(), &mut t, e) });
    expect(got, KB_OK, &[]);
    assert!(!t.is_null());
    t
}

fn status(ctl: *const kb_controller, slot: usize) -> kb_slot_status {
    let mut st = std::mem::MaybeUninit::<kb_slot_status>::uninit();
    // SAFETY: valid pointers.
    expect(
        call(|e| unsafe { kb_controller_status(ctl, slot, st.as_mut_ptr(), e) }),
        KB_OK,
        &[],
    );
    // SAFETY: written on success.
    unsafe { st.assume_init() }
}

fn text_of(chars: &[c_char]) -> String {
    // SAFETY: the library NUL-terminates these arrays.
    unsafe { CStr::from_ptr(chars.as_ptr()) }
        .to_str()
        .unwrap()
        .to_string()
}

// ---- tests ----

#[test]
fn versions_and_limits_match_the_crates() {
    let v = env!("CARGO_PKG_VERSION");
    // SAFETY: a static string.
    assert_eq!(unsafe { CStr::from_ptr(kb_version()) }.to_str().unwrap(), v);
    let parts: Vec<u32> = v.split('.').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        [KB_VERSION_MAJOR, KB_VERSION_MINOR, KB_VERSION_PATCH],
        [parts[0], parts[1], parts[2]]
    );
    assert_eq!(
        KB_VERSION_NUMBER,
        KB_VERSION_MAJOR * 10000 + KB_VERSION_MINOR * 100 + KB_VERSION_PATCH
    );
    assert_eq!(kb_version_number(), KB_VERSION_NUMBER);
    use knnblend_core::index;
    assert_eq!(KB_MAX_K, index::MAX_K);
    assert_eq!(KB_MAX_NPROBE, index::MAX_NPROBE);
    assert_eq!(KB_BLOCK, index::BLOCK);
    assert_eq!(KB_MAX_SLOTS, knnblend_core::live::MAX_SLOTS);
    assert_eq!(KB_MAX_DIM, knnblend_core::format::MAX_DIM);
}

#[test]
fn every_status_has_a_description() {
    let mut seen = std::collections::HashSet::new();
    for code in 0..=13 {
        // SAFETY: static strings.
        let s = unsafe { CStr::from_ptr(kb_status_str(code)) }
            .to_str()
            .unwrap();
        assert!(!s.is_empty() && s != "unknown status code", "{code}");
        assert!(seen.insert(s), "{code} shares its text");
    }
    for code in [-1, 14, 1000, i32::MIN] {
        // SAFETY: static strings.
        let s = unsafe { CStr::from_ptr(kb_status_str(code)) }
            .to_str()
            .unwrap();
        assert_eq!(s, "unknown status code");
    }
    assert_eq!(KB_ERR_PANIC as i32, 12);
    assert_eq!(KB_ERR_CAPACITY as i32, 13);
}

#[test]
fn null_pointers_give_kb_err_null_and_never_crash() {
    let (f, _) = files();
    let ix = open(&f.kbi);
    let s = new_searcher();
    let (ctl, audio) = new_live(&config(2, D));
    let q = vec![0.5f32; D];
    let mut o = vec![0f32; D];
    let mut nb = [kb_neighbour::default(); KB_MAX_K];
    let mut n = 0usize;
    let p = cpath(&f.kbi);
    // SAFETY: every pointer is NULL or valid.
    unsafe {
        // Index and searcher.
        let mut out = null_mut();
        expect(
            call(|e| kb_index_open(null(), 0, &mut out, e)),
            KB_ERR_NULL,
            &["path"],
        );
        expect(
            call(|e| kb_index_open(p.as_ptr(), 0, null_mut(), e)),
            KB_ERR_NULL,
            &["out"],
        );
        assert!(out.is_null(), "nothing is written on failure");
        expect(
            call(|e| kb_searcher_new(null_mut(), e)),
            KB_ERR_NULL,
            &["out"],
        );
        let mut info = kb_index_info::EMPTY;
        assert_eq!(kb_index_get_info(null(), &mut info), KB_ERR_NULL);
        assert_eq!(kb_index_get_info(ix, null_mut()), KB_ERR_NULL);
        assert_eq!(
            kb_index_features(null(), null_mut(), 0, &mut n),
            KB_ERR_NULL
        );
        assert_eq!(
            kb_index_metadata_json(null(), null_mut(), 0, &mut n),
            KB_ERR_NULL
        );
        assert_eq!(kb_index_vector(null(), 0, o.as_mut_ptr(), D), KB_ERR_NULL);
        assert_eq!(kb_index_vector(ix, 0, null_mut(), D), KB_ERR_NULL);
        let search = |s, ix, q: *const f32, out: *mut kb_neighbour, found: *mut usize| {
            kb_search(s, ix, q, D, 8, 1, out, KB_MAX_K, found)
        };
        assert_eq!(
            search(null_mut(), ix, q.as_ptr(), nb.as_mut_ptr(), &mut n),
            KB_ERR_NULL
        );
        assert_eq!(
            search(s, null(), q.as_ptr(), nb.as_mut_ptr(), &mut n),
            KB_ERR_NULL
        );
        assert_eq!(search(s, ix, null(), nb.as_mut_ptr(), &mut n), KB_ERR_NULL);
        assert_eq!(search(s, ix, q.as_ptr(), null_mut(), &mut n), KB_ERR_NULL);
        assert_eq!(
            search(s, ix, q.as_ptr(), nb.as_mut_ptr(), null_mut()),
            KB_ERR_NULL
        );
        let nbp = nb.as_mut_ptr();
        let block = |found: *mut usize| {
            kb_search_block(s, ix, q.as_ptr(), 1, D, 8, 1, nbp, KB_MAX_K, found)
        };
        assert_eq!(block(null_mut()), KB_ERR_NULL);
        let blend =
            |s, ix, q: *const f32, o: *mut f32| kb_blend(s, ix, q, D, 8, 1, 0.5, o, D, null_mut());
        assert_eq!(
            blend(null_mut(), ix, q.as_ptr(), o.as_mut_ptr()),
            KB_ERR_NULL
        );
        assert_eq!(blend(s, null(), q.as_ptr(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(blend(s, ix, null(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(blend(s, ix, q.as_ptr(), null_mut()), KB_ERR_NULL);

        // Live runtime.
        let (mut c2, mut a2) = (null_mut(), null_mut());
        expect(
            call(|e| kb_live_new(null(), null_mut(), &mut a2, e)),
            KB_ERR_NULL,
            &["control"],
        );
        expect(
            call(|e| kb_live_new(null(), &mut c2, null_mut(), e)),
            KB_ERR_NULL,
            &["audio"],
        );
        assert!(c2.is_null() && a2.is_null());
        let mut t = null_mut();
        expect(
            call(|e| kb_controller_load(null(), 0, p.as_ptr(), &mut t, e)),
            KB_ERR_NULL,
            &["control"],
        );
        expect(
            call(|e| kb_controller_load(ctl, 0, null(), &mut t, e)),
            KB_ERR_NULL,
            &["path"],
        );
        assert!(t.is_null());
        let mut none: *mut kb_index = null_mut();
        expect(
            call(|e| kb_controller_publish(ctl, 0, &mut none, null(), e)),
            KB_ERR_NULL,
            &["index"],
        );
        expect(
            call(|e| kb_controller_publish(ctl, 0, null_mut(), null(), e)),
            KB_ERR_NULL,
            &["index"],
        );
        expect(
            call(|e| kb_controller_unload(null(), 0, e)),
            KB_ERR_NULL,
            &["control"],
        );
        expect(
            call(|e| kb_controller_status(ctl, 0, null_mut(), e)),
            KB_ERR_NULL,
            &["out"],
        );
        expect(
            call(|e| kb_controller_telemetry(null(), null_mut(), e)),
            KB_ERR_NULL,
            &["control"],
        );
        assert_eq!(kb_controller_reset_peaks(null()), KB_ERR_NULL);
        assert_eq!(kb_controller_collect(null(), null_mut()), KB_ERR_NULL);
        assert_eq!(kb_controller_slots(null()), 0);
        assert_eq!(kb_controller_indexes_alive(null()), 0);
        let mut ts = std::mem::MaybeUninit::<kb_ticket_status>::uninit();
        expect(
            call(|e| kb_ticket_poll(null(), ts.as_mut_ptr(), e)),
            KB_ERR_NULL,
            &["ticket"],
        );
        expect(
            call(|e| kb_ticket_wait(null(), 10, ts.as_mut_ptr(), e)),
            KB_ERR_NULL,
            &["ticket"],
        );

        // Audio side.
        assert_eq!(kb_audio_begin_block(null_mut(), 0, 0.0), KB_ERR_NULL);
        let ab = |a, q: *const f32, o: *mut f32| kb_audio_blend(a, q, D, 8, 0.5, o, D, null_mut());
        assert_eq!(ab(null_mut(), q.as_ptr(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(ab(audio, null(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(ab(audio, q.as_ptr(), null_mut()), KB_ERR_NULL);
        let abb = |a, q: *const f32, o: *mut f32| {
            kb_audio_blend_block(a, q, 1, D, 8, 0.5, o, D, null_mut())
        };
        assert_eq!(abb(null_mut(), q.as_ptr(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(abb(audio, null(), o.as_mut_ptr()), KB_ERR_NULL);
        assert_eq!(abb(audio, q.as_ptr(), null_mut()), KB_ERR_NULL);
        assert_eq!(kb_audio_end_block(null_mut()), KB_ERR_NULL);
        assert_eq!(kb_audio_set_frame_period(null_mut(), 0.01), KB_ERR_NULL);
        assert_eq!(kb_audio_serving_id(null()), 0);
        assert_eq!(kb_audio_serving_dim(null()), 0);
        assert!(!kb_audio_is_fading(null()));
        assert_eq!(kb_audio_active_slot(null()), 0);

        // Errors and frees.
        assert_eq!(kb_error_code(null()), KB_ERR_NULL);
        assert!(!CStr::from_ptr(kb_error_message(null()))
            .to_bytes()
            .is_empty());
        kb_error_free(null_mut());
        kb_index_free(null_mut());
        kb_searcher_free(null_mut());
        kb_ticket_free(null_mut());
        kb_controller_free(null_mut());
        kb_audio_free(null_mut());

        // Call without an error out-parameter: just the code.
        assert_eq!(kb_index_open(null(), 0, &mut out, null_mut()), KB_ERR_NULL);
    }
    let (mut ix, mut s, mut ctl, mut audio) = (ix, s, ctl, audio);
    // SAFETY: live handles, freed once each.
    unsafe {
        kb_index_free(&mut ix);
        kb_searcher_free(&mut s);
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
    }
}

#[test]
fn calls_after_destroy_through_the_same_pointer_get_kb_err_null() {
    let (f, _) = files();
    let mut ix = open(&f.kbi);
    let mut s = new_searcher();
    let (mut ctl, mut audio) = new_live(&config(2, D));
    let mut t = load(ctl, 0, &f.kbi);
    let q = vec![0.1f32; D];
    let mut o = vec![0f32; D];
    let mut nb = [kb_neighbour::default(); 8];
    let mut n = 0;
    // SAFETY: each handle is freed once; later calls get NULL pointers.
    unsafe {
        kb_ticket_free(&mut t);
        kb_index_free(&mut ix);
        kb_searcher_free(&mut s);
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
        assert!(ix.is_null() && s.is_null() && audio.is_null() && ctl.is_null() && t.is_null());
        // A second destroy is a no-op.
        kb_ticket_free(&mut t);
        kb_index_free(&mut ix);
        kb_searcher_free(&mut s);
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
        // Every use reports KB_ERR_NULL.
        assert_eq!(
            kb_search(s, ix, q.as_ptr(), D, 8, 1, nb.as_mut_ptr(), 8, &mut n),
            KB_ERR_NULL
        );
        assert_eq!(
            kb_audio_blend(audio, q.as_ptr(), D, 8, 1.0, o.as_mut_ptr(), D, null_mut()),
            KB_ERR_NULL
        );
        assert_eq!(kb_audio_begin_block(audio, 0, 0.0), KB_ERR_NULL);
        expect(
            call(|e| kb_controller_unload(ctl, 0, e)),
            KB_ERR_NULL,
            &["control"],
        );
        let mut ts = std::mem::MaybeUninit::<kb_ticket_status>::uninit();
        expect(
            call(|e| kb_ticket_poll(t, ts.as_mut_ptr(), e)),
            KB_ERR_NULL,
            &["ticket"],
        );
    }
}

#[test]
fn opening_bad_files_gives_the_right_code_and_a_message_naming_the_file() {
    let (f, _) = files();
    let mut ix = null_mut();
    let open_err = |path: &CString, flags: u32, ix: &mut *mut kb_index| {
        // SAFETY: valid pointers.
        call(|e| unsafe { kb_index_open(path.as_ptr(), flags, ix, e) })
    };
    let missing = f.dir.join("nope.kbi");
    expect(
        open_err(&cpath(&missing), 0, &mut ix),
        KB_ERR_IO,
        &["nope.kbi"],
    );
    expect(
        open_err(&cpath(&f.dir), 0, &mut ix),
        KB_ERR_IO,
        &["directory"],
    );
    expect(open_err(&cpath(&f.garbage), 0, &mut ix), KB_ERR_FORMAT, &[]);
    expect(
        open_err(&cpath(&f.truncated), 0, &mut ix),
        KB_ERR_FORMAT,
        &[],
    );
    expect(
        open_err(&cpath(&f.kbi), 0x80, &mut ix),
        KB_ERR_ARGUMENT,
        &["flags", "0x80"],
    );
    // A path that is not UTF-8 (Latin-1 "é").
    let latin1 = CString::new(b"/tmp/caf\xe9.kbi".to_vec()).unwrap();
    expect(
        open_err(&latin1, 0, &mut ix),
        KB_ERR_UTF8,
        &["UTF-8", "caf"],
    );
    assert!(ix.is_null(), "no index is written on failure");

    // And the good ones, with every flag.
    for (path, flags, kind, mapped) in [
        (&f.kbi, 0, kb_file_kind::KB_FILE_KBI, true),
        (
            &f.kbi,
            KB_OPEN_NO_VERIFY | KB_OPEN_PREFAULT | KB_OPEN_MLOCK,
            kb_file_kind::KB_FILE_KBI,
            true,
        ),
        (
            &f.faiss,
            KB_OPEN_PREFAULT,
            kb_file_kind::KB_FILE_FAISS,
            false,
        ),
    ] {
        expect(open_err(&cpath(path), flags, &mut ix), KB_OK, &[]);
        let mut info = kb_index_info::EMPTY;
        // SAFETY: live index.
        unsafe {
            assert_eq!(kb_index_get_info(ix, &mut info), KB_OK);
            kb_index_free(&mut ix);
        }
        assert_eq!(
            (info.dim, info.kind, info.mapped, info.id),
            (D, kind, mapped, 0)
        );
        assert!(info.ntotal > 1000 && info.nlist >= 20 && info.bytes > 0);
        assert_eq!(info.metric, kb_metric::KB_METRIC_L2);
    }
}

#[test]
fn searches_and_blends_equal_the_rust_api_bit_for_bit() {
    let (f, _) = files();
    for path in [&f.kbi, &f.faiss] {
        let ix = open(path);
        let s = new_searcher();
        let rust = IvfIndex::open(path).unwrap();
        let mut rs = Searcher::new();
        let parts = rust.to_parts();
        let qs = queries(&parts, 37, 11);
        for (k, nprobe) in [(8, 1), (1, 1), (32, 4), (5, 9)] {
            // Single searches.
            for q in qs.chunks_exact(D) {
                let mut out = [kb_neighbour::default(); KB_MAX_K];
                let mut n = 0;
                // SAFETY: valid pointers and sizes.
                let code = unsafe {
                    kb_search(
                        s,
                        ix,
                        q.as_ptr(),
                        D,
                        k,
                        nprobe,
                        out.as_mut_ptr(),
                        KB_MAX_K,
                        &mut n,
                    )
                };
                assert_eq!(code, KB_OK);
                let want = rs.search(&rust, q, k, nprobe);
                assert_eq!(n, want.len());
                for (a, b) in out[..n].iter().zip(want) {
                    assert_eq!(
                        (a.distance.to_bits(), a.id, a.pos),
                        (b.distance.to_bits(), b.id, b.pos)
                    );
                }
            }
            // One block call for all 37 (runs of 16, 16, 5).
            let nq = qs.len() / D;
            let mut out = vec![kb_neighbour::default(); nq * k];
            let mut found = vec![0usize; nq];
            // SAFETY: valid pointers and sizes.
            let code = unsafe {
                kb_search_block(
                    s,
                    ix,
                    qs.as_ptr(),
                    nq,
                    D,
                    k,
                    nprobe,
                    out.as_mut_ptr(),
                    out.len(),
                    found.as_mut_ptr(),
                )
            };
            assert_eq!(code, KB_OK);
            for (i, q) in qs.chunks_exact(D).enumerate() {
                let want = rs.search(&rust, q, k, nprobe);
                assert_eq!(found[i], want.len());
                for (a, b) in out[i * k..i * k + found[i]].iter().zip(want) {
                    assert_eq!(
                        (a.distance.to_bits(), a.id, a.pos),
                        (b.distance.to_bits(), b.id, b.pos)
                    );
                }
            }
        }
        // Blends, including ratio 0 and an out-of-range ratio.
        for ratio in [0.75f32, 1.0, 0.0, 3.0] {
            for q in qs.chunks_exact(D).take(9) {
                let mut out = vec![0f32; D];
                let mut oc = kb_blend_outcome::KB_BLEND_EMPTY;
                // SAFETY: valid pointers and sizes.
                let code = unsafe {
                    kb_blend(
                        s,
                        ix,
                        q.as_ptr(),
                        D,
                        8,
                        1,
                        ratio,
                        out.as_mut_ptr(),
                        D,
                        &mut oc,
                    )
                };
                assert_eq!(code, KB_OK);
                let mut want = vec![0f32; D];
                let params = BlendParams {
                    expansion: None,
                    k: 8,
                    nprobe: 1,
                    ratio,
                };
                let o = rs.blend(&rust, q, &params, &mut want);
                assert_eq!(bits(&out), bits(&want));
                assert_eq!(oc, crate::index::outcome(o));
            }
        }
        // The stored vector of a neighbour.
        let mut v = vec![0f32; D];
        // SAFETY: valid pointers.
        unsafe {
            assert_eq!(kb_index_vector(ix, 3, v.as_mut_ptr(), D), KB_OK);
            assert_eq!(bits(&v), bits(rust.vector(3)));
            assert_eq!(
                kb_index_vector(ix, rust.ntotal(), v.as_mut_ptr(), D),
                KB_ERR_ARGUMENT
            );
            assert_eq!(
                kb_index_vector(ix, 0, v.as_mut_ptr(), D - 1),
                KB_ERR_DIMENSION
            );
        }
        let (mut ix, mut s) = (ix, s);
        // SAFETY: live handles.
        unsafe {
            kb_index_free(&mut ix);
            kb_searcher_free(&mut s);
        }
    }
}

#[test]
fn wrong_sizes_ranges_overlaps_and_alignment_are_refused() {
    let (f, _) = files();
    let (mut ix, mut s) = (open(&f.kbi), new_searcher());
    let q: Vec<f32> = (0..D).map(|i| i as f32 * 0.01).collect();
    let mut o = vec![7f32; D];
    let mut nb = [kb_neighbour::default(); KB_MAX_K];
    let mut n = 0usize;
    let (nbp, np, op) = (nb.as_mut_ptr(), &mut n as *mut usize, o.as_mut_ptr());
    // SAFETY: pointers valid for the lengths given (the misaligned one is never read).
    unsafe {
        let out = || std::slice::from_raw_parts(op, D).to_vec();
        let search =
            |len, k, nprobe, cap| kb_search(s, ix, q.as_ptr(), len, k, nprobe, nbp, cap, np);
        assert_eq!(search(D - 1, 8, 1, KB_MAX_K), KB_ERR_DIMENSION);
        assert_eq!(search(D, 0, 1, KB_MAX_K), KB_ERR_ARGUMENT);
        assert_eq!(search(D, 33, 1, KB_MAX_K), KB_ERR_ARGUMENT);
        assert_eq!(search(D, 8, 0, KB_MAX_K), KB_ERR_ARGUMENT);
        assert_eq!(search(D, 8, 65, KB_MAX_K), KB_ERR_ARGUMENT);
        assert_eq!(search(D, 8, 1, 7), KB_ERR_ARGUMENT);
        assert_eq!(search(usize::MAX, 8, 1, KB_MAX_K), KB_ERR_ARGUMENT);
        let misaligned = (q.as_ptr() as *const u8).add(1) as *const f32;
        assert_eq!(
            kb_search(s, ix, misaligned, D - 1, 8, 1, nbp, KB_MAX_K, np),
            KB_ERR_ARGUMENT
        );
        let mut found = [0usize; 2];
        let fp = found.as_mut_ptr();
        let block = |nq, dim, cap| kb_search_block(s, ix, q.as_ptr(), nq, dim, 8, 1, nbp, cap, fp);
        assert_eq!(block(1, D - 1, KB_MAX_K), KB_ERR_DIMENSION);
        assert_eq!(block(2, D / 2, KB_MAX_K), KB_ERR_DIMENSION);
        assert_eq!(block(1, D, 7), KB_ERR_ARGUMENT);
        assert_eq!(block(usize::MAX, 2, KB_MAX_K), KB_ERR_ARGUMENT);
        assert_eq!(block(0, D, 0), KB_OK, "an empty block is fine");

        // Blends pass the query through on size errors.
        let blend =
            |len, out_len, k| kb_blend(s, ix, q.as_ptr(), len, k, 1, 1.0, op, out_len, null_mut());
        assert_eq!(blend(D, D - 1, 8), KB_ERR_ARGUMENT);
        assert_eq!(bits(&out()[..D - 1]), bits(&q[..D - 1]));
        std::slice::from_raw_parts_mut(op, D).fill(7.0);
        assert_eq!(blend(D - 1, D - 1, 8), KB_ERR_DIMENSION);
        assert_eq!(bits(&out()[..D - 1]), bits(&q[..D - 1]));
        assert_eq!(blend(D, D, 0), KB_ERR_ARGUMENT);
        assert_eq!(bits(&out()), bits(&q));
        // In place (query == out) is refused rather than silently wrong.
        let mut inplace = q.clone();
        assert_eq!(
            kb_blend(
                s,
                ix,
                inplace.as_ptr(),
                D,
                8,
                1,
                1.0,
                inplace.as_mut_ptr(),
                D,
                null_mut()
            ),
            KB_ERR_ARGUMENT
        );
        assert_eq!(
            bits(&inplace),
            bits(&q),
            "a refused in-place call leaves the buffer alone"
        );
        kb_index_free(&mut ix);
        kb_searcher_free(&mut s);
    }
}

#[test]
fn string_getters_follow_the_snprintf_contract() {
    let (f, _) = files();
    let mut ix = open(&f.kbi);
    let mut needed = 0usize;
    // SAFETY: buffers valid for the capacities given.
    unsafe {
        assert_eq!(kb_index_features(ix, null_mut(), 0, &mut needed), KB_OK);
        assert_eq!(needed, "rvc-test-160".len());
        let mut small = [1 as c_char; 4];
        assert_eq!(
            kb_index_features(ix, small.as_mut_ptr(), 4, &mut needed),
            KB_ERR_BUFFER
        );
        assert_eq!(text_of(&small), "rvc");
        let mut buf = [1 as c_char; 64];
        assert_eq!(
            kb_index_features(ix, buf.as_mut_ptr(), 64, null_mut()),
            KB_OK
        );
        assert_eq!(text_of(&buf), "rvc-test-160");
        assert_eq!(
            kb_index_features(ix, null_mut(), 0, null_mut()),
            KB_ERR_BUFFER
        );
        assert_eq!(
            kb_index_features(ix, null_mut(), 5, &mut needed),
            KB_ERR_NULL
        );

        assert_eq!(
            kb_index_metadata_json(ix, null_mut(), 0, &mut needed),
            KB_OK
        );
        let mut json = vec![0 as c_char; needed + 1];
        assert_eq!(
            kb_index_metadata_json(ix, json.as_mut_ptr(), json.len(), &mut needed),
            KB_OK
        );
        let v: serde_json::Value = serde_json::from_str(&text_of(&json)).unwrap();
        assert_eq!(v["features"], "rvc-test-160");
        kb_index_free(&mut ix);
    }
    // Truncation keeps whole characters.
    let mut b = [1 as c_char; 5];
    crate::util::fill(&mut b, "aéé"); // 1 + 2 + 2 bytes: "aé" fits in 4
    assert_eq!(text_of(&b), "aé");
}

#[test]
fn a_load_polled_to_completion_serves_what_the_rust_api_serves() {
    let (f, a_parts) = files();
    let (mut ctl, mut audio) = new_live(&config(3, 768));
    // SAFETY: valid handles and pointers throughout.
    unsafe {
        assert_eq!(kb_controller_slots(ctl), 3);
        // Load a .kbi into slot 0 and the faiss file into slot 1; poll both to completion.
        let mut ta = load(ctl, 0, &f.kbi);
        let mut tb = load(ctl, 1, &f.faiss);
        let (sa, code, m) = poll(ta);
        assert_eq!(
            (sa.state, code, m),
            (kb_load_state::KB_LOAD_PUBLISHED, KB_OK, None)
        );
        let (sb, _, _) = poll(tb);
        assert_eq!(sb.state, kb_load_state::KB_LOAD_PUBLISHED);
        assert_eq!((sa.slot, sb.slot), (0, 1));
        assert!(sa.index.id != 0 && sa.index.id != sb.index.id);
        assert_eq!(
            (sa.index.dim, sa.index.kind),
            (D, kb_file_kind::KB_FILE_KBI)
        );
        assert_eq!(sb.index.kind, kb_file_kind::KB_FILE_FAISS);
        assert!(sa.total > 0 && sa.done == sa.total, "{sa:?}");
        // Waiting on a finished ticket returns at once with the same outcome.
        let mut again = std::mem::MaybeUninit::<kb_ticket_status>::uninit();
        expect(
            call(|e| kb_ticket_wait(ta, KB_WAIT_FOREVER, again.as_mut_ptr(), e)),
            KB_OK,
            &[],
        );
        assert_eq!(again.assume_init().index.id, sa.index.id);
        kb_ticket_free(&mut ta);
        kb_ticket_free(&mut tb);

        let st = status(ctl, 0);
        assert_eq!(st.state, kb_slot_state::KB_SLOT_READY);
        assert!(st.has_index);
        assert_eq!(text_of(&st.name), "a.kbi");
        assert_eq!(st.index.id, sa.index.id);
        assert_eq!(text_of(&st.message), "");
        assert_eq!(status(ctl, 2).state, kb_slot_state::KB_SLOT_EMPTY);

        // The audio side serves slot 0 (instant switch): per frame and per block, equal to
        // the Rust API on the same file and queries.
        let rust = IvfIndex::open(&f.kbi).unwrap();
        let mut rs = Searcher::new();
        let qs = queries(&a_parts, 20, 4);
        let nq = qs.len() / D;
        assert_eq!(kb_audio_begin_block(audio, 0, 0.0), KB_OK);
        assert_eq!(kb_audio_serving_id(audio), sa.index.id);
        assert_eq!(kb_audio_serving_dim(audio), D);
        let (per_frame, block) = audio_frames_and_block(audio, &qs);
        let mut want = vec![0f32; qs.len()];
        let params = BlendParams {
            expansion: None,
            k: 8,
            nprobe: 1,
            ratio: 0.75,
        };
        rs.blend_batch(&rust, &qs, &params, &mut want);
        assert_eq!(
            bits(&per_frame),
            bits(&want),
            "kb_audio_blend differs from Searcher::blend"
        );
        assert_eq!(
            bits(&block),
            bits(&want),
            "kb_audio_blend_block differs from Searcher::blend"
        );

        // A frame of another width passes through with KB_ERR_DIMENSION, counted.
        let narrow = vec![0.25f32; 48];
        let mut out = vec![0f32; 48];
        assert_eq!(kb_audio_begin_block(audio, 0, 0.0), KB_OK);
        assert_eq!(
            kb_audio_blend(
                audio,
                narrow.as_ptr(),
                48,
                8,
                1.0,
                out.as_mut_ptr(),
                48,
                null_mut()
            ),
            KB_ERR_DIMENSION
        );
        assert_eq!(bits(&out), bits(&narrow));
        assert_eq!(
            kb_audio_blend_block(
                audio,
                narrow.as_ptr(),
                1,
                48,
                8,
                1.0,
                out.as_mut_ptr(),
                48,
                null_mut()
            ),
            KB_ERR_DIMENSION
        );
        kb_audio_end_block(audio);

        let mut t = kb_telemetry::default();
        expect(
            call(|e| kb_controller_telemetry(ctl, &mut t, e)),
            KB_OK,
            &[],
        );
        assert_eq!(t.slots, 3);
        assert_eq!(t.blocks, 2);
        assert_eq!(t.queries, 2 * nq as u64 + 2);
        assert_eq!(t.mismatched_queries, 2);
        assert_eq!(t.serving_id, sa.index.id);
        assert_eq!(t.slot[0].index_id, sa.index.id);
        assert_eq!(t.slot[1].index_id, sb.index.id);
        assert_eq!(t.slot[0].queries, t.queries);
        assert_eq!(kb_controller_reset_peaks(ctl), KB_OK);

        // Switch to slot 1 with a crossfade, then unload it: the output passes through.
        assert_eq!(kb_audio_set_frame_period(audio, 0.01), KB_OK);
        assert_eq!(kb_audio_set_frame_period(audio, f32::NAN), KB_ERR_ARGUMENT);
        let qb = queries(&rust.to_parts(), 1, 9);
        let mut o = vec![0f32; D];
        kb_audio_begin_block(audio, 1, 0.03);
        assert!(kb_audio_is_fading(audio));
        assert_eq!(kb_audio_active_slot(audio), 1);
        for _ in 0..4 {
            kb_audio_blend(audio, qb.as_ptr(), D, 8, 1.0, o.as_mut_ptr(), D, null_mut());
        }
        kb_audio_end_block(audio);
        expect(call(|e| kb_controller_unload(ctl, 1, e)), KB_OK, &[]);
        assert_eq!(status(ctl, 1).state, kb_slot_state::KB_SLOT_EMPTY);
        for _ in 0..3 {
            kb_audio_begin_block(audio, 1, 0.0);
            kb_audio_end_block(audio);
        }
        assert_eq!(kb_audio_serving_id(audio), 0);
        kb_audio_begin_block(audio, 1, 0.0);
        let mut oc = kb_blend_outcome::KB_BLEND_BLENDED;
        assert_eq!(
            kb_audio_blend(audio, qb.as_ptr(), D, 8, 1.0, o.as_mut_ptr(), D, &mut oc),
            KB_OK
        );
        assert_eq!(oc, kb_blend_outcome::KB_BLEND_EMPTY);
        assert_eq!(bits(&o), bits(&qb));
        kb_audio_end_block(audio);

        // Everything is released once both halves are gone.
        kb_audio_free(&mut audio);
        let mut released = 0;
        assert_eq!(kb_controller_collect(ctl, &mut released), KB_OK);
        assert_eq!(kb_controller_indexes_alive(ctl), 0);
        kb_controller_free(&mut ctl);
    }
}

#[test]
fn failed_loads_report_their_code_and_message_through_ticket_and_status() {
    let (f, _) = files();
    let (mut ctl, mut audio) = new_live(&config(2, 64));
    // SAFETY: valid handles and pointers.
    unsafe {
        let cases: [(&Path, kb_status, &[&str]); 4] = [
            (&f.dir.join("missing.kbi"), KB_ERR_IO, &["missing.kbi"]),
            (&f.garbage, KB_ERR_FORMAT, &["garbage.index"]),
            (&f.truncated, KB_ERR_FORMAT, &["truncated.kbi"]),
            (&f.kbi, KB_ERR_DIMENSION, &["a.kbi", "160", "64"]),
        ];
        for (path, code, words) in cases {
            let mut t = load(ctl, 1, path);
            let (st, got, m) = poll(t);
            assert_eq!(st.state, kb_load_state::KB_LOAD_FAILED, "{path:?}");
            assert_eq!(st.error, code);
            expect((got, m), code, words);
            let s = status(ctl, 1);
            assert_eq!(s.state, kb_slot_state::KB_SLOT_FAILED);
            assert!(
                text_of(&s.message).contains(words[0]),
                "{}",
                text_of(&s.message)
            );
            kb_ticket_free(&mut t);
        }
        // A slot out of range, a non-UTF-8 path: refused by the call itself, no ticket.
        let mut t = null_mut();
        let p = cpath(&f.kbi);
        expect(
            call(|e| kb_controller_load(ctl, 2, p.as_ptr(), &mut t, e)),
            KB_ERR_SLOT,
            &["slot 2", "0 to 1"],
        );
        expect(
            call(|e| kb_controller_load(ctl, usize::MAX, p.as_ptr(), &mut t, e)),
            KB_ERR_SLOT,
            &[],
        );
        let latin1 = CString::new(b"caf\xe9.kbi".to_vec()).unwrap();
        expect(
            call(|e| kb_controller_load(ctl, 0, latin1.as_ptr(), &mut t, e)),
            KB_ERR_UTF8,
            &["UTF-8"],
        );
        assert!(t.is_null());
        expect(
            call(|e| kb_controller_unload(ctl, 5, e)),
            KB_ERR_SLOT,
            &["slot 5"],
        );
        let mut st = std::mem::MaybeUninit::<kb_slot_status>::uninit();
        expect(
            call(|e| kb_controller_status(ctl, 9, st.as_mut_ptr(), e)),
            KB_ERR_SLOT,
            &["slot 9"],
        );
        // The audio side: a slot out of range keeps the active slot and says so.
        assert_eq!(kb_audio_begin_block(audio, 7, 0.0), KB_ERR_SLOT);
        assert_eq!(kb_audio_active_slot(audio), 0);
        kb_audio_end_block(audio);
        // A load without a ticket is fine too.
        expect(
            call(|e| kb_controller_load(ctl, 0, p.as_ptr(), null_mut(), e)),
            KB_OK,
            &[],
        );
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
    }
}

#[test]
fn bad_configurations_are_refused() {
    let d = kb_live_config_default();
    assert_eq!((d.slots, d.max_dim, d.require_dim), (8, 768, 0));
    assert!(d.validate.is_none() && d.validate_user.is_null());
    let bad = [
        (kb_live_config { slots: 0, ..d }, "slots"),
        (kb_live_config { slots: 9, ..d }, "slots"),
        (kb_live_config { max_dim: 0, ..d }, "max_dim"),
        (
            kb_live_config {
                max_dim: KB_MAX_DIM + 1,
                ..d
            },
            "max_dim",
        ),
        (
            kb_live_config {
                require_dim: 769,
                ..d
            },
            "require_dim",
        ),
        (
            kb_live_config {
                crossfade_seconds: f32::NAN,
                ..d
            },
            "finite",
        ),
        (
            kb_live_config {
                frame_period_seconds: f32::INFINITY,
                ..d
            },
            "finite",
        ),
    ];
    for (c, word) in bad {
        let (mut ctl, mut audio) = (null_mut(), null_mut());
        // SAFETY: valid pointers.
        let got = call(|e| unsafe { kb_live_new(&c, &mut ctl, &mut audio, e) });
        expect(got, KB_ERR_ARGUMENT, &[word]);
        assert!(ctl.is_null() && audio.is_null());
    }
    // NULL config: the defaults.
    let (mut ctl, mut audio) = (null_mut(), null_mut());
    // SAFETY: valid pointers.
    unsafe {
        expect(
            call(|e| kb_live_new(null(), &mut ctl, &mut audio, e)),
            KB_OK,
            &[],
        );
        assert_eq!(kb_controller_slots(ctl), 8);
        kb_controller_free(&mut ctl);
        kb_audio_free(&mut audio);
    }
}

/// Refuses indexes whose feature kind is not `user` (a C string), saying why.
unsafe extern "C" fn features_must_be(
    user: *mut c_void,
    index: *const kb_index,
    reason: *mut c_char,
    cap: usize,
) -> c_int {
    let want = unsafe { CStr::from_ptr(user as *const c_char) }.to_bytes();
    let mut buf = [0 as c_char; 64];
    let mut info = kb_index_info::EMPTY;
    unsafe {
        assert_eq!(kb_index_get_info(index, &mut info), KB_OK);
        kb_index_features(index, buf.as_mut_ptr(), buf.len(), null_mut());
        if CStr::from_ptr(buf.as_ptr()).to_bytes() == want {
            return 0;
        }
        let msg = format!("wrong features ({} dims)\0", info.dim);
        let n = msg.len().min(cap);
        std::ptr::copy_nonoverlapping(msg.as_ptr().cast(), reason, n);
        *reason.add(cap - 1) = 0;
    }
    1
}

#[test]
fn validators_refuse_with_their_reason() {
    let (f, _) = files();
    let want = cstr("rvc-test-160");
    let c = kb_live_config {
        slots: 2,
        max_dim: 256,
        validate: Some(features_must_be),
        validate_user: want.as_ptr() as *mut c_void,
        ..kb_live_config_default()
    };
    let (mut ctl, mut audio) = new_live(&c);
    // SAFETY: valid handles and pointers.
    unsafe {
        let mut t = load(ctl, 0, &f.kbi);
        assert_eq!(poll(t).0.state, kb_load_state::KB_LOAD_PUBLISHED);
        kb_ticket_free(&mut t);
        let mut t = load(ctl, 1, &f.faiss); // no features recorded: refused
        let (st, code, m) = poll(t);
        assert_eq!(st.state, kb_load_state::KB_LOAD_FAILED);
        expect(
            (code, m),
            KB_ERR_REJECTED,
            &["wrong features (160 dims)", "added_IVF20"],
        );
        kb_ticket_free(&mut t);

        // Publishing an index opened by the host runs the same checks.
        let mut ix = open(&f.faiss);
        expect(
            call(|e| kb_controller_publish(ctl, 1, &mut ix, null(), e)),
            KB_ERR_REJECTED,
            &["wrong features"],
        );
        assert!(ix.is_null(), "a refused index is consumed");
        let mut ix = open(&f.kbi);
        let name = cstr("Alice (v2)");
        expect(
            call(|e| kb_controller_publish(ctl, 3, &mut ix, name.as_ptr(), e)),
            KB_ERR_SLOT,
            &[],
        );
        assert!(
            !ix.is_null(),
            "an index refused for its slot stays the caller's"
        );
        expect(
            call(|e| kb_controller_publish(ctl, 1, &mut ix, name.as_ptr(), e)),
            KB_OK,
            &[],
        );
        assert!(ix.is_null());
        assert_eq!(text_of(&status(ctl, 1).name), "Alice (v2)");
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
    }

    // require_dim alone.
    let c = kb_live_config {
        require_dim: 48,
        ..config(1, 256)
    };
    let (mut ctl, mut audio) = new_live(&c);
    // SAFETY: valid handles.
    unsafe {
        let mut t = load(ctl, 0, &f.kbi);
        let (st, code, m) = poll(t);
        assert_eq!(st.error, KB_ERR_REJECTED);
        expect(
            (code, m),
            KB_ERR_REJECTED,
            &["expected 48-dimensional", "160"],
        );
        kb_ticket_free(&mut t);
        let mut t = load(ctl, 0, &f.other_dim);
        assert_eq!(poll(t).0.state, kb_load_state::KB_LOAD_PUBLISHED);
        kb_ticket_free(&mut t);
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
    }
}

#[test]
fn panics_in_control_side_bodies_are_caught_and_reported() {
    // SAFETY: a writable error pointer.
    let got = call(|e| unsafe { control(e, || panic!("boom {}", 42)) });
    expect(got, KB_ERR_PANIC, &["internal error", "boom 42"]);
    // SAFETY: as above.
    let got = call(|e| unsafe { control(e, || Err(Error::new(KB_ERR_IO, "a\0b"))) });
    expect(got, KB_ERR_IO, &["a\u{fffd}b"]);
}

#[test]
fn error_paths_free_everything_they_allocate() {
    let (f, _) = files();
    let missing = cpath(&f.dir.join("missing.kbi"));
    let latin1 = CString::new(b"caf\xe9.kbi".to_vec()).unwrap();
    let (mut ctl, mut audio) = new_live(&config(2, D));
    let round = || {
        let mut ix = null_mut();
        // SAFETY: valid pointers; each error is freed by `call`.
        unsafe {
            call(|e| kb_index_open(missing.as_ptr(), 0, &mut ix, e));
            call(|e| kb_index_open(latin1.as_ptr(), 0, &mut ix, e));
            call(|e| kb_index_open(missing.as_ptr(), 0xff, &mut ix, e));
            call(|e| kb_controller_load(ctl, 7, missing.as_ptr(), null_mut(), e));
            call(|e| kb_controller_unload(ctl, 7, e));
            call(|e| control(e, || Err(Error::argument("x".repeat(100)))));
            let mut st = std::mem::MaybeUninit::<kb_slot_status>::uninit();
            call(|e| kb_controller_status(ctl, 9, st.as_mut_ptr(), e));
        }
    };
    round(); // first-use caches (of the standard library) are not leaks
    let leaked = net_bytes(|| (0..50).for_each(|_| round()));
    assert_eq!(leaked, 0, "error paths leaked {leaked} bytes");
    // SAFETY: live handles.
    unsafe {
        kb_audio_free(&mut audio);
        kb_controller_free(&mut ctl);
    }
}

#[test]
fn the_test_faiss_writer_writes_what_the_core_reads() {
    let p = rvc_parts(5, 24, 200, 6, "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.index");
    write_faiss_file(&path, &p);
    let back = knnblend_core::format::read_faiss_index(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(back.centroids, p.centroids);
    assert_eq!(back.lists, p.lists);
}

/// `qs` (whole rows of `D`) blended by the audio side in the block begun by the caller, frame
/// by frame (`kb_audio_blend`) and as one block (`kb_audio_blend_block`), k 8, ratio 0.75;
/// every frame must blend. Ends the block.
///
/// # Safety
/// `audio` is a live audio handle.
unsafe fn audio_frames_and_block(audio: *mut kb_audio, qs: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let nq = qs.len() / D;
    let mut per_frame = vec![0f32; qs.len()];
    for (q, o) in qs.chunks_exact(D).zip(per_frame.chunks_exact_mut(D)) {
        let mut oc = kb_blend_outcome::KB_BLEND_EMPTY;
        // SAFETY: valid pointers and lengths; `audio` as the caller guarantees.
        let code =
            unsafe { kb_audio_blend(audio, q.as_ptr(), D, 8, 0.75, o.as_mut_ptr(), D, &mut oc) };
        assert_eq!((code, oc), (KB_OK, kb_blend_outcome::KB_BLEND_BLENDED));
    }
    let mut block = vec![0f32; qs.len()];
    let mut blended = 0;
    // SAFETY: as above.
    let code = unsafe {
        kb_audio_blend_block(
            audio,
            qs.as_ptr(),
            nq,
            D,
            8,
            0.75,
            block.as_mut_ptr(),
            block.len(),
            &mut blended,
        )
    };
    assert_eq!((code, blended), (KB_OK, nq));
    // SAFETY: as above.
    assert_eq!(unsafe { kb_audio_end_block(audio) }, KB_OK);
    (per_frame, block)
}
