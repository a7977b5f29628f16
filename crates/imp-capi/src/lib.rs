//! The C API of imp: `libimp` (shared and static) with the header `include/imp.h`, which
//! cbindgen writes from this file (`cbindgen.toml`; a test fails when the committed header is
//! stale).
//!
//! What every function keeps to: handles are opaque; each call returns an [`ImpStatus`] and, on
//! failure, leaves a message that [`imp_last_error`] returns on the same thread; no panic crosses
//! into C (it becomes [`ImpStatus::Internal`]). One model serves any number of sessions, and
//! different sessions may generate on different threads at once.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, TryLockError};

mod options;

use options::{GenerateParams, LoadParams};

/// What a call did.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImpStatus {
    Ok = 0,
    /// A NULL where a value is needed, text that is not UTF-8, or options JSON that does not
    /// parse, names an unknown option or holds a value out of range.
    InvalidArgument = 1,
    /// The model, an image or the prompt could not be used; `imp_last_error()` says why.
    Failed = 2,
    /// The token callback returned non-zero: `*out_text` holds the answer up to there, and the
    /// unfinished turn is not kept in the conversation.
    Stopped = 3,
    /// A bug in imp, caught at the boundary; free the handle it happened in.
    Internal = 4,
}

/// A loaded model: immutable weights, shared by its sessions.
pub struct ImpModel {
    model: Arc<engine::ImpModel>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

/// One conversation with a model: its turns, images and key/value cache.
pub struct ImpSession {
    model: Arc<engine::ImpModel>,
    pool: Option<Arc<rayon::ThreadPool>>,
    /// Locked by the call using it: a second thread gets an error, not a data race.
    conversation: Mutex<engine::Conversation>,
}

/// An image: the file at `path`, or, when `path` is NULL, `height` rows of `width` RGB8 pixels
/// at `rgb`, each row starting `stride` bytes after the previous one (0 means `3 * width`).
#[repr(C)]
pub struct ImpImage {
    pub path: *const c_char,
    pub rgb: *const u8,
    pub width: u32,
    pub height: u32,
    pub stride: u32,
}

/// Receives each piece of the answer as soon as it is final (NUL-terminated UTF-8, valid only
/// during the call); returning non-zero stops the generation.
pub type ImpTokenCallback =
    Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> c_int>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Why a call failed.
struct Failure(ImpStatus, String);

impl Failure {
    fn invalid(message: impl Into<String>) -> Self {
        Self(ImpStatus::InvalidArgument, message.into())
    }
}

impl From<engine::Error> for Failure {
    fn from(error: engine::Error) -> Self {
        let status = match error {
            engine::Error::InvalidArgument(_) => ImpStatus::InvalidArgument,
            _ => ImpStatus::Failed,
        };
        Self(status, error.to_string())
    }
}

/// Runs a call's body: records its failure for `imp_last_error`, turns a panic into
/// [`ImpStatus::Internal`].
fn call(body: impl FnOnce() -> Result<ImpStatus, Failure>) -> ImpStatus {
    let (status, message) = match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => return status,
        Ok(Err(Failure(status, message))) => (status, message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            (ImpStatus::Internal, format!("internal error: {what}"))
        }
    };
    LAST_ERROR.with(|last| *last.borrow_mut() = c_string(message));
    status
}

/// A C string of `text`; a NUL inside (which C cannot hold) becomes U+FFFD.
fn c_string(text: String) -> CString {
    CString::new(text).unwrap_or_else(|e| {
        let text = String::from_utf8_lossy(&e.into_vec()).replace('\0', "\u{FFFD}");
        CString::new(text).unwrap_or_default()
    })
}

/// The UTF-8 text at `text`; NULL is `None`.
///
/// # Safety
/// `text` is NULL or a NUL-terminated string.
unsafe fn optional_str<'a>(text: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if text.is_null() {
        return Ok(None);
    }
    CStr::from_ptr(text)
        .to_str()
        .map(Some)
        .map_err(|_| Failure::invalid(format!("{what} is not UTF-8")))
}

/// # Safety
/// As [`optional_str`].
unsafe fn required_str<'a>(text: *const c_char, what: &str) -> Result<&'a str, Failure> {
    optional_str(text, what)?.ok_or_else(|| Failure::invalid(format!("{what} is NULL")))
}

/// `*out`, set to NULL so that a failure leaves no stale handle; an error if `out` is NULL.
///
/// # Safety
/// `out` is NULL or writable.
unsafe fn cleared<'a, T>(out: *mut *mut T) -> Result<&'a mut *mut T, Failure> {
    let out = out
        .as_mut()
        .ok_or_else(|| Failure::invalid("out is NULL"))?;
    *out = std::ptr::null_mut();
    Ok(out)
}

/// imp's version, such as "0.1.0".
#[no_mangle]
pub extern "C" fn imp_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" if none), valid until the next
/// failing call on this thread.
#[no_mangle]
pub extern "C" fn imp_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// Loads a model folder, Hugging Face repo id (from its cache) or `.gguf` file.
/// `options_json` (NULL or `{}`: the defaults) takes `imp run`'s loading options: `dtype`
/// ("f32", "f16", "bf16"), `quant`, `llm_quant`, `vision_quant`, `projector_quant`,
/// `image_size`, `pool`, `lora` (an adapter folder), `kv_cache` ("f32", "f16", "bf16", "q8";
/// default f16) and `threads` (this model's worker threads; default: the process-wide pool,
/// one per core).
///
/// # Safety
/// `path` and `options_json` are NULL or NUL-terminated strings; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imp_model_load(
    path: *const c_char,
    options_json: *const c_char,
    out: *mut *mut ImpModel,
) -> ImpStatus {
    call(|| {
        let out = cleared(out)?;
        let spec = required_str(path, "path")?;
        let params = LoadParams::parse(optional_str(options_json, "options_json")?)?;
        let pool = params.thread_pool()?;
        let options = params.load_options()?;
        let dir = engine::hub::resolve_model(spec, &engine::hub::HubOptions::default())?;
        let model = engine::ImpModel::load(&dir, &options)?;
        *out = Box::into_raw(Box::new(ImpModel {
            model: Arc::new(model),
            pool,
        }));
        Ok(ImpStatus::Ok)
    })
}

/// Frees a model (NULL is ignored). Its sessions stay usable: the weights go with the last.
///
/// # Safety
/// `model` is NULL or from `imp_model_load`, and not used again.
#[no_mangle]
pub unsafe extern "C" fn imp_model_free(model: *mut ImpModel) {
    if !model.is_null() {
        drop(Box::from_raw(model));
    }
}

/// Starts a conversation with `model`.
///
/// # Safety
/// `model` is NULL or a live model; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imp_session_new(
    model: *const ImpModel,
    out: *mut *mut ImpSession,
) -> ImpStatus {
    call(|| {
        let out = cleared(out)?;
        let model = model
            .as_ref()
            .ok_or_else(|| Failure::invalid("model is NULL"))?;
        *out = Box::into_raw(Box::new(ImpSession {
            conversation: Mutex::new(engine::Conversation::new(&model.model)),
            model: Arc::clone(&model.model),
            pool: model.pool.clone(),
        }));
        Ok(ImpStatus::Ok)
    })
}

/// Forgets the conversation so far (the cache's memory is kept for the next one).
///
/// # Safety
/// `session` is NULL or a live session. A session in use by another call (another thread, or
/// the callback of its own generation) refuses with `IMP_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn imp_session_reset(session: *mut ImpSession) -> ImpStatus {
    call(|| {
        let session = session
            .as_ref()
            .ok_or_else(|| Failure::invalid("session is NULL"))?;
        session.conversation()?.clear();
        Ok(ImpStatus::Ok)
    })
}

/// Frees a session (NULL is ignored).
///
/// # Safety
/// `session` is NULL or from `imp_session_new`, and not used again.
#[no_mangle]
pub unsafe extern "C" fn imp_session_free(session: *mut ImpSession) {
    if !session.is_null() {
        drop(Box::from_raw(session));
    }
}

/// Asks `prompt` about `images` as the next turn of the session's conversation and answers it.
/// Without `<image>` markers in `prompt`, one per image goes before it (as in `imp run`).
/// `params_json` (NULL or `{}`: greedy, as `imp run`) takes `max_new_tokens`, `temperature`,
/// `top_k`, `top_p`, `min_p`, `repetition_penalty`, `seed` and `stop` (a list of strings).
/// `cb`, if not NULL, gets each piece of text on the calling thread. `out_text`, if not NULL,
/// receives the whole answer (also after `IMP_STATUS_STOPPED`), to free with `imp_string_free`.
///
/// # Safety
/// `session` is a live session (one in use by another call answers
/// `IMP_STATUS_INVALID_ARGUMENT`); `prompt` and `params_json` are NULL or NUL-terminated;
/// `images` points to `n_images` images (or is NULL when there are none), each with a
/// NUL-terminated `path` or `rgb` pointing to the bytes its size and stride describe;
/// `out_text` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn imp_generate(
    session: *mut ImpSession,
    prompt: *const c_char,
    images: *const ImpImage,
    n_images: usize,
    params_json: *const c_char,
    cb: ImpTokenCallback,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
) -> ImpStatus {
    call(|| {
        if !out_text.is_null() {
            *out_text = std::ptr::null_mut();
        }
        let session = session
            .as_ref()
            .ok_or_else(|| Failure::invalid("session is NULL"))?;
        let prompt = required_str(prompt, "prompt")?;
        let params = GenerateParams::parse(optional_str(params_json, "params_json")?)?;
        let images = read_images(images, n_images)?;
        let stop = Arc::new(AtomicBool::new(false));
        let options = params.generation_options(Arc::clone(&stop))?;

        let mut answer = String::new();
        let mut conversation = session.conversation()?;
        let result = session.generate(&mut conversation, prompt, &images, &options, &mut |piece| {
            answer.push_str(piece);
            if let Some(cb) = cb {
                let piece = c_string(piece.to_owned());
                if cb(piece.as_ptr(), user_data) != 0 {
                    stop.store(true, Ordering::Relaxed);
                }
            }
        });
        let status = match result {
            Ok(generation) => {
                answer = generation.text;
                ImpStatus::Ok
            }
            Err(engine::Error::Cancelled) if stop.load(Ordering::Relaxed) => ImpStatus::Stopped,
            Err(error) => return Err(error.into()),
        };
        if !out_text.is_null() {
            *out_text = c_string(answer).into_raw();
        }
        Ok(status)
    })
}

/// Frees a string imp returned (NULL is ignored).
///
/// # Safety
/// `text` is NULL or from imp, and not used again.
#[no_mangle]
pub unsafe extern "C" fn imp_string_free(text: *mut c_char) {
    if !text.is_null() {
        drop(CString::from_raw(text));
    }
}

impl ImpSession {
    /// Generates on the model's worker threads while this thread hands each piece of text to
    /// `on_text`, so that a C callback always runs on the thread that called imp. The worker
    /// waits for each piece to be handed out before it goes on, so that a stop the callback asks
    /// for is seen before the next token.
    /// The conversation, unless another thread is using this session.
    fn conversation(&self) -> Result<MutexGuard<'_, engine::Conversation>, Failure> {
        match self.conversation.try_lock() {
            Ok(conversation) => Ok(conversation),
            Err(TryLockError::WouldBlock) => Err(Failure::invalid(
                "session is in use by another thread; give each thread a session of its own",
            )),
            // A panic was caught while it generated; what it holds is still consistent.
            Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
        }
    }

    fn generate(
        &self,
        conversation: &mut engine::Conversation,
        prompt: &str,
        images: &[image::RgbImage],
        options: &engine::GenerationOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> engine::Result<engine::Generation> {
        let (sender, pieces) = mpsc::channel::<String>();
        let (handed_out, handed) = mpsc::channel::<()>();
        let model = &self.model;
        let mut result = None;
        in_place_scope(self.pool.as_deref(), |scope| {
            scope.spawn(|_| {
                let handed = handed;
                result = Some(
                    conversation.ask(model, prompt, images, options, &mut |piece| {
                        // Both ends live until the generation ends, unless this thread unwinds.
                        if sender.send(piece.to_owned()).is_ok() {
                            let _ = handed.recv();
                        }
                    }),
                );
                drop(sender);
            });
            // Owned here, so that an unwinding caller frees the waiting worker.
            let handed_out = handed_out;
            for piece in pieces {
                on_text(&piece);
                let _ = handed_out.send(());
            }
        });
        result.unwrap_or(Err(engine::Error::Cancelled))
    }
}

/// Runs `work` on this thread, and what it spawns on `pool` (else rayon's global pool).
fn in_place_scope<'scope>(
    pool: Option<&rayon::ThreadPool>,
    work: impl FnOnce(&rayon::Scope<'scope>),
) {
    match pool {
        Some(pool) => pool.in_place_scope(work),
        None => rayon::in_place_scope(work),
    }
}

/// # Safety
/// As [`imp_generate`]'s `images`.
unsafe fn read_images(
    images: *const ImpImage,
    count: usize,
) -> Result<Vec<image::RgbImage>, Failure> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if images.is_null() {
        return Err(Failure::invalid(format!(
            "images is NULL but n_images is {count}"
        )));
    }
    std::slice::from_raw_parts(images, count)
        .iter()
        .enumerate()
        .map(|(i, image)| read_image(i, image))
        .collect()
}

/// # Safety
/// As [`imp_generate`]'s `images`.
unsafe fn read_image(index: usize, image: &ImpImage) -> Result<image::RgbImage, Failure> {
    if let Some(path) = optional_str(image.path, &format!("images[{index}].path"))? {
        return Ok(engine::load_rgb(std::path::Path::new(path))?);
    }
    if image.rgb.is_null() {
        return Err(Failure::invalid(format!(
            "images[{index}] has neither a path nor rgb pixels"
        )));
    }
    let name = format!("images[{index}]");
    engine::preprocess::check_dimensions(image.width, image.height, &name)?;
    let row = 3 * image.width as usize;
    let stride = match image.stride {
        0 => row,
        stride => stride as usize,
    };
    if stride < row {
        return Err(Failure::invalid(format!(
            "{name}: a row of {} RGB pixels needs {row} bytes, but the stride is {stride}",
            image.width
        )));
    }
    // At most MAX_SIDE rows of at most 4 GiB: no overflow.
    let len = stride * (image.height as usize - 1) + row;
    let pixels = std::slice::from_raw_parts(image.rgb, len);
    Ok(engine::rgb_from_rows(
        pixels,
        image.width,
        image.height,
        stride,
        &name,
    )?)
}
