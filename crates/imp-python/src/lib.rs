//! `imp_rs`, the Python package of imp: a thin layer over the `imp` crate (no model logic here).
//!
//! What it keeps to: the GIL is released while imp works (loading, vision, prefill, decode), so
//! Python threads generating at once run in parallel; a generation runs on its own thread and
//! hands its text to the caller through a channel, so that Ctrl-C and a dropped stream stop it;
//! every imp error becomes a Python exception carrying imp's message. The stubs beside this
//! crate (`imp_rs.pyi`) document the API for type checkers and editors.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use image::RgbImage;
use pyo3::exceptions::{PyException, PyFileNotFoundError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use engine::messages::{decode_data_url, ChatMessages, DataUrlError, ImageUrl};
use engine::{GenerationOptions, ImpModel, Prompt};

pyo3::create_exception!(
    imp_rs,
    ImpError,
    PyException,
    "imp could not do what was asked: a model, image or prompt it cannot use. The message says \
     which and why."
);

/// How often a thread waiting for imp looks for a pending signal (Ctrl-C).
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

fn to_py_err(error: engine::Error) -> PyErr {
    let message = error.to_string();
    match error {
        engine::Error::InvalidArgument(_) => PyValueError::new_err(message),
        engine::Error::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(message)
        }
        _ => ImpError::new_err(message),
    }
}

/// A loaded Imp model: immutable weights that any number of generations, conversations and
/// threads share.
#[pyclass(frozen, module = "imp_rs")]
struct Model {
    runner: Runner,
    spec: String,
}

/// The weights and the threads they run on, shared by a model and its conversations.
#[derive(Clone)]
struct Runner {
    model: Arc<ImpModel>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (
        path, *, dtype = "f32", quant = None, llm_quant = None, vision_quant = None,
        projector_quant = None, image_size = None, pool = 1, lora = None, kv_cache = None,
        threads = None, offline = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        dtype: &str,
        quant: Option<&str>,
        llm_quant: Option<&str>,
        vision_quant: Option<&str>,
        projector_quant: Option<&str>,
        image_size: Option<usize>,
        pool: usize,
        lora: Option<PathBuf>,
        kv_cache: Option<&str>,
        threads: Option<usize>,
        offline: Option<bool>,
    ) -> PyResult<Self> {
        if pool == 0 {
            return Err(PyValueError::new_err("pool must be at least 1"));
        }
        let spec = path.to_string_lossy().into_owned();
        let dtype = engine::dtype_from_name(dtype).map_err(to_py_err)?;
        let kv_cache = kv_cache
            .map(str::parse::<engine::KvCache>)
            .transpose()
            .map_err(to_py_err)?;
        let quantization = engine::quant::Quantization::from_names(
            quant,
            llm_quant,
            vision_quant,
            projector_quant,
        )
        .map_err(to_py_err)?;
        let pool_of_threads = threads.map(thread_pool).transpose()?;
        let hub = engine::hub::HubOptions {
            offline,
            progress: true,
            ..Default::default()
        };
        let model = py
            .detach(|| {
                let adapter = lora
                    .map(|dir| engine::adapter::Adapter::load(&dir, &candle_core::Device::Cpu))
                    .transpose()?
                    .map(Arc::new);
                let options = engine::LoadOptions {
                    dtype,
                    image_size,
                    pool,
                    quantization,
                    adapter,
                    kv_cache,
                    ..Default::default()
                };
                let dir = engine::hub::resolve_model(&spec, &hub)?;
                ImpModel::load(&dir, &options)
            })
            .map_err(to_py_err)?;
        Ok(Self {
            runner: Runner {
                model: Arc::new(model),
                pool: pool_of_threads,
            },
            spec,
        })
    }

    /// Answers `prompt` about `images` in a fresh context.
    #[pyo3(signature = (
        prompt, images = None, *, max_new_tokens = 512, temperature = 0.0, top_k = None,
        top_p = None, min_p = None, repetition_penalty = 1.0, seed = 0, stop = None,
        stream = false, details = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        images: Option<Vec<Bound<'_, PyAny>>>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repetition_penalty: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        stream: bool,
        details: bool,
    ) -> PyResult<Py<PyAny>> {
        let sampling = Sampling {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
        };
        let images = images_from_py(images)?;
        let work = Work::Fresh(Prompt::from_cli(prompt));
        self.run(py, work, images, sampling, stream, details)
    }

    /// Answers OpenAI-shaped chat messages: `[{"role": "user", "content": [{"type":
    /// "image_url", "image_url": {"url": ...}}, {"type": "text", "text": ...}]}, ...]`; an
    /// image URL is a `data:` URL, a `file://` URL or a path.
    #[pyo3(signature = (
        messages, *, max_new_tokens = 512, temperature = 0.0, top_k = None, top_p = None,
        min_p = None, repetition_penalty = 1.0, seed = 0, stop = None, stream = false,
        details = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn chat(
        &self,
        py: Python<'_>,
        messages: &Bound<'_, PyAny>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repetition_penalty: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        stream: bool,
        details: bool,
    ) -> PyResult<Py<PyAny>> {
        let sampling = Sampling {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
        };
        let json: String = py
            .import("json")?
            .call_method1("dumps", (messages,))?
            .extract()?;
        let value: serde_json::Value = serde_json::from_str(&json)
            .map_err(|e| PyValueError::new_err(format!("messages: {e}")))?;
        let list = value
            .as_array()
            .ok_or_else(|| PyTypeError::new_err("messages must be a list of message dicts"))?;
        let messages = ChatMessages::parse(list).map_err(|e| match e.param {
            Some(param) => PyValueError::new_err(format!("{param}: {}", e.message)),
            None => PyValueError::new_err(e.message),
        })?;
        let images = py.detach(|| {
            messages
                .images
                .iter()
                .map(|image| image_from_url(&image.url, &image.param))
                .collect::<PyResult<Vec<_>>>()
        })?;
        let family = self.runner.model.config().decoder.family;
        let work = Work::Fresh(messages.prompt(family));
        self.run(py, work, images, sampling, stream, details)
    }

    /// A multi-turn conversation whose turns reuse the cache of the ones before.
    fn conversation(&self) -> Conversation {
        Conversation {
            runner: self.runner.clone(),
            state: Arc::new(Mutex::new(engine::Conversation::new(&self.runner.model))),
            busy: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The released model this checkpoint is laid out as, such as "Imp-v1.5-3B-Phi2".
    #[getter]
    fn variant(&self) -> &'static str {
        self.runner.model.info().variant
    }

    /// Rows each image takes in the prompt.
    #[getter]
    fn image_tokens(&self) -> usize {
        self.runner.model.image_tokens()
    }

    /// The longest prompt plus answer, in tokens.
    #[getter]
    fn max_context(&self) -> usize {
        self.runner.model.config().max_context
    }

    fn __repr__(&self) -> String {
        format!(
            "imp_rs.Model({:?}, variant={:?})",
            self.spec,
            self.variant()
        )
    }
}

impl Model {
    fn run(
        &self,
        py: Python<'_>,
        work: Work,
        images: Vec<RgbImage>,
        sampling: Sampling,
        stream: bool,
        details: bool,
    ) -> PyResult<Py<PyAny>> {
        let started = self.runner.start(work, images, sampling.options()?);
        finish(py, started, stream, details)
    }
}

/// One conversation with a model: its turns, images and cache. One question at a time.
#[pyclass(frozen, module = "imp_rs")]
struct Conversation {
    runner: Runner,
    state: Arc<Mutex<engine::Conversation>>,
    /// Set while a question is being answered.
    busy: Arc<AtomicBool>,
}

#[pymethods]
impl Conversation {
    /// Asks `prompt` about `images` as the next turn. A failed or stopped turn leaves the
    /// conversation as it was.
    #[pyo3(signature = (
        prompt, images = None, *, max_new_tokens = 512, temperature = 0.0, top_k = None,
        top_p = None, min_p = None, repetition_penalty = 1.0, seed = 0, stop = None,
        stream = false, details = false,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn ask(
        &self,
        py: Python<'_>,
        prompt: &str,
        images: Option<Vec<Bound<'_, PyAny>>>,
        max_new_tokens: usize,
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        min_p: Option<f32>,
        repetition_penalty: f32,
        seed: u64,
        stop: Option<Vec<String>>,
        stream: bool,
        details: bool,
    ) -> PyResult<Py<PyAny>> {
        let options = Sampling {
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            seed,
            stop,
        }
        .options()?;
        let images = images_from_py(images)?;
        let busy = Busy::claim(&self.busy)?;
        let work = Work::Turn {
            conversation: Arc::clone(&self.state),
            question: prompt.to_owned(),
            _busy: busy,
        };
        finish(
            py,
            self.runner.start(work, images, options),
            stream,
            details,
        )
    }

    /// Forgets the turns so far (the cache's memory is kept for the next ones).
    fn reset(&self) -> PyResult<()> {
        let _busy = Busy::claim(&self.busy)?;
        lock(&self.state).clear();
        Ok(())
    }

    /// `(question, answer)` of every turn so far.
    #[getter]
    fn turns(&self) -> PyResult<Vec<(String, String)>> {
        let _busy = Busy::claim(&self.busy)?;
        Ok(lock(&self.state)
            .turns()
            .iter()
            .map(|turn| {
                (
                    turn.user.clone(),
                    turn.assistant.clone().unwrap_or_default(),
                )
            })
            .collect())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic inside imp is turned into an error where it happened; the data stays usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A conversation's claim to answer; released when dropped (on the generation's thread).
struct Busy(Arc<AtomicBool>);

impl Busy {
    fn claim(flag: &Arc<AtomicBool>) -> PyResult<Self> {
        if flag.swap(true, Ordering::Acquire) {
            return Err(ImpError::new_err(
                "this conversation is still answering a question; finish or close that stream \
                 first",
            ));
        }
        Ok(Self(Arc::clone(flag)))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// The sampling options every generating method takes, named as in `imp run`.
struct Sampling {
    max_new_tokens: usize,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    min_p: Option<f32>,
    repetition_penalty: f32,
    seed: u64,
    stop: Option<Vec<String>>,
}

impl Sampling {
    fn options(self) -> PyResult<GenerationOptions> {
        if self.max_new_tokens == 0 {
            return Err(PyValueError::new_err("max_new_tokens must be at least 1"));
        }
        let sampling = engine::SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
        };
        sampling.validate().map_err(to_py_err)?;
        Ok(GenerationOptions {
            max_new_tokens: self.max_new_tokens,
            sampling,
            stop_strings: self.stop.unwrap_or_default(),
            cancel: Some(Arc::new(AtomicBool::new(false))),
            ..Default::default()
        })
    }
}

enum Work {
    Fresh(Prompt),
    Turn {
        conversation: Arc<Mutex<engine::Conversation>>,
        question: String,
        _busy: Busy,
    },
}

enum Event {
    Text(String),
    Done(PyResult<engine::Generation>),
}

impl Runner {
    /// Generates on a thread of its own (in the model's pool, if it has one).
    fn start(&self, work: Work, images: Vec<RgbImage>, options: GenerationOptions) -> Stream {
        let (sender, events) = mpsc::channel();
        let cancel = options.cancel.clone().unwrap_or_default();
        let Runner { model, pool } = self.clone();
        std::thread::Builder::new()
            .name("imp-generate".into())
            .spawn(move || {
                let mut on_text = |piece: &str| {
                    // The receiver is gone when its stream was dropped, which also cancels.
                    let _ = sender.send(Event::Text(piece.to_owned()));
                };
                let mut generate = || match &work {
                    Work::Fresh(prompt) => {
                        engine::generate(&model, prompt, &images, &options, &mut on_text)
                    }
                    Work::Turn {
                        conversation,
                        question,
                        ..
                    } => lock(conversation).ask(&model, question, &images, &options, &mut on_text),
                };
                // A panic becomes the stream's error rather than a silent end.
                let result = match catch_unwind(AssertUnwindSafe(|| match &pool {
                    Some(pool) => pool.install(generate),
                    None => generate(),
                })) {
                    Ok(result) => result.map_err(to_py_err),
                    Err(panic) => Err(internal_error(&*panic)),
                };
                // Released before the result is seen, so that the next turn may start at once.
                drop(work);
                let _ = sender.send(Event::Done(result));
            })
            .map(|_| Stream {
                events: Mutex::new(events),
                cancel: Arc::clone(&cancel),
                result: Mutex::new(None),
            })
            .unwrap_or_else(|e| Stream::failed(e, cancel))
    }
}

/// A panic inside imp (a bug) as an exception.
fn internal_error(panic: &(dyn std::any::Any + Send)) -> PyErr {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ImpError::new_err(format!("internal error in imp (a bug): {what}"))
}

fn finish(py: Python<'_>, stream: Stream, streaming: bool, details: bool) -> PyResult<Py<PyAny>> {
    if streaming {
        return Ok(Py::new(py, stream)?.into_any());
    }
    let generation = loop {
        match stream.next_event(py)? {
            Some(Event::Text(_)) => {}
            Some(Event::Done(result)) => break result?,
            None => return Err(ImpError::new_err("the generation ended without a result")),
        }
    };
    if details {
        Ok(Py::new(py, Generation::from(generation))?.into_any())
    } else {
        Ok(PyString::new(py, &generation.text).into_any().unbind())
    }
}

/// The answer's text, piece by piece as it is generated. Closing or dropping it stops the
/// generation; `result` holds the details once the last piece is read.
#[pyclass(module = "imp_rs")]
struct Stream {
    events: Mutex<Receiver<Event>>,
    cancel: Arc<AtomicBool>,
    result: Mutex<Option<Py<Generation>>>,
}

impl Stream {
    /// A stream that ends at once with `error` (no thread could be started).
    fn failed(error: std::io::Error, cancel: Arc<AtomicBool>) -> Self {
        let (sender, events) = mpsc::channel();
        let message = format!("starting a generation thread: {error}");
        let _ = sender.send(Event::Done(Err(ImpError::new_err(message))));
        Self {
            events: Mutex::new(events),
            cancel,
            result: Mutex::new(None),
        }
    }

    /// The next event, waiting without the GIL; `None` once the generation has ended and its
    /// result was taken. A signal (Ctrl-C) stops the generation and raises.
    fn next_event(&self, py: Python<'_>) -> PyResult<Option<Event>> {
        let mut events = lock(&self.events);
        loop {
            // A `&mut` of the receiver may cross threads, a `&` may not.
            let receiver: &mut Receiver<Event> = &mut events;
            let received = py.detach(move || receiver.recv_timeout(SIGNAL_CHECK));
            // After every piece too: they may come faster than the timeout.
            if let Err(signal) = py.check_signals() {
                self.cancel.store(true, Ordering::Relaxed);
                // Wait for the generation to end, so that it no longer holds its conversation
                // when the exception reaches the caller.
                drain(py, &mut events);
                return Err(signal);
            }
            match received {
                Ok(event) => return Ok(Some(event)),
                Err(RecvTimeoutError::Disconnected) => return Ok(None),
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

/// Waits (without the GIL) until the generation has ended.
fn drain(py: Python<'_>, events: &mut Receiver<Event>) {
    py.detach(move || while events.recv().is_ok() {});
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl Stream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        match self.next_event(py)? {
            Some(Event::Text(piece)) => Ok(Some(piece)),
            Some(Event::Done(result)) => {
                let generation = Generation::from(result?);
                *lock(&self.result) = Some(Py::new(py, generation)?);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Stops the generation; the conversation (if any) keeps none of this answer.
    fn close(&self, py: Python<'_>) {
        self.cancel.store(true, Ordering::Relaxed);
        drain(py, &mut lock(&self.events));
    }

    /// The details of the finished generation; `None` until its last piece was read.
    #[getter]
    fn result(&self, py: Python<'_>) -> Option<Py<Generation>> {
        lock(&self.result).as_ref().map(|g| g.clone_ref(py))
    }
}

/// What a generation produced: its text, tokens and counts. `str()` gives the text.
#[pyclass(frozen, get_all, module = "imp_rs")]
struct Generation {
    text: String,
    /// Generated token ids, without the stop token.
    tokens: Vec<u32>,
    /// "stop" (a stop token or string) or "length" (`max_new_tokens` or the context limit).
    finish_reason: &'static str,
    /// Tokens of the spliced prompt: text tokens plus image rows.
    prompt_tokens: usize,
    image_tokens: usize,
    /// Prompt tokens taken from the conversation's cache rather than computed.
    cached_tokens: usize,
    /// Seconds from the image's preprocessing to the first token.
    time_to_first_token: f64,
    /// Tokens per second of the decode loop (0 when it did not run).
    decode_tokens_per_second: f64,
}

impl From<engine::Generation> for Generation {
    fn from(generation: engine::Generation) -> Self {
        let timings = &generation.timings;
        let decode = timings.decode.as_secs_f64();
        Self {
            finish_reason: generation.finish_reason.as_str(),
            prompt_tokens: generation.prompt_tokens,
            image_tokens: generation.image_tokens,
            cached_tokens: generation.reused_tokens,
            time_to_first_token: timings.time_to_first_token().as_secs_f64(),
            decode_tokens_per_second: if decode > 0.0 {
                timings.decode_steps as f64 / decode
            } else {
                0.0
            },
            tokens: generation.tokens,
            text: generation.text,
        }
    }
}

#[pymethods]
impl Generation {
    fn __str__(&self) -> &str {
        &self.text
    }

    fn __repr__(&self) -> String {
        format!(
            "imp_rs.Generation(text={:?}, tokens={}, finish_reason={:?})",
            self.text,
            self.tokens.len(),
            self.finish_reason
        )
    }
}

fn thread_pool(threads: usize) -> PyResult<Arc<rayon::ThreadPool>> {
    if threads == 0 {
        return Err(PyValueError::new_err("threads must be at least 1"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("imp-worker-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| ImpError::new_err(format!("starting {threads} threads: {e}")))
}

fn images_from_py(images: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<Vec<RgbImage>> {
    images
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, image)| image_from_py(image, &format!("images[{i}]")))
        .collect()
}

/// A path (str or os.PathLike), encoded bytes, a PIL image or an HxWx3 uint8 array.
fn image_from_py(image: &Bound<'_, PyAny>, name: &str) -> PyResult<RgbImage> {
    let py = image.py();
    if image.is_instance_of::<PyString>() || image.hasattr("__fspath__")? {
        let path: PathBuf = image.extract()?;
        return py.detach(|| engine::load_rgb(&path)).map_err(to_py_err);
    }
    if let Ok(bytes) = image.cast::<PyBytes>() {
        let bytes = bytes.as_bytes();
        return py
            .detach(|| engine::decode_rgb(bytes, name))
            .map_err(to_py_err);
    }
    if let Ok(bytes) = image.cast::<PyByteArray>() {
        let bytes = bytes.to_vec();
        return py
            .detach(|| engine::decode_rgb(&bytes, name))
            .map_err(to_py_err);
    }
    if image.hasattr("convert")? && image.hasattr("tobytes")? && image.hasattr("size")? {
        // A PIL image, in any mode: converted to RGB the way imp converts decoded files.
        let rgb = image.call_method1("convert", ("RGB",))?;
        let (width, height): (u32, u32) = rgb.getattr("size")?.extract()?;
        return rows(&rgb.call_method0("tobytes")?, width, height, name);
    }
    if image.hasattr("__array_interface__")? {
        let shape: Vec<usize> = image.getattr("shape")?.extract()?;
        let dtype: String = image.getattr("dtype")?.str()?.extract()?;
        let [height, width, 3] = shape[..] else {
            return Err(PyValueError::new_err(format!(
                "{name}: an array image must have shape (height, width, 3), got {shape:?}"
            )));
        };
        if dtype != "uint8" {
            return Err(PyValueError::new_err(format!(
                "{name}: an array image must hold uint8 RGB values, got dtype {dtype}"
            )));
        }
        let too_large = |_| PyValueError::new_err(format!("{name}: {width}×{height} is too large"));
        let width = u32::try_from(width).map_err(too_large)?;
        let height = u32::try_from(height).map_err(too_large)?;
        // `tobytes` gives C order whatever the array's strides.
        return rows(&image.call_method0("tobytes")?, width, height, name);
    }
    Err(PyTypeError::new_err(format!(
        "{name}: expected a path, bytes of an image file, a PIL image or an HxWx3 uint8 array, \
         got {}",
        image.get_type().name()?
    )))
}

fn rows(bytes: &Bound<'_, PyAny>, width: u32, height: u32, name: &str) -> PyResult<RgbImage> {
    let bytes = bytes.cast::<PyBytes>()?.as_bytes();
    engine::rgb_from_rows(bytes, width, height, 3 * width as usize, name).map_err(to_py_err)
}

/// The image behind a chat message's URL: `data:`, `file://` or a path; never the network.
fn image_from_url(url: &str, param: &str) -> PyResult<RgbImage> {
    let bytes_limit = engine::files::limits::IMAGE_BYTES as usize;
    let path = match ImageUrl::parse(url) {
        ImageUrl::Data(rest) => {
            let bytes = decode_data_url(rest, bytes_limit).map_err(|error| {
                PyValueError::new_err(match error {
                    DataUrlError::Invalid(message) => {
                        format!("{param}: invalid image data URL: {message}")
                    }
                    DataUrlError::TooLarge => {
                        format!("{param}: the image is larger than {bytes_limit} bytes")
                    }
                })
            })?;
            return engine::decode_rgb(&bytes, param).map_err(to_py_err);
        }
        ImageUrl::Remote(url) => {
            return Err(PyValueError::new_err(format!(
                "{param}: imp_rs does not download images; fetch {url} yourself and pass its \
                 bytes as a data: URL, or a path"
            )))
        }
        ImageUrl::File(path) => path,
        ImageUrl::Other(path) => path.to_owned(),
    };
    engine::load_rgb(path.as_ref()).map_err(to_py_err)
}

#[pymodule]
fn imp_rs(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add("ImpError", module.py().get_type::<ImpError>())?;
    module.add_class::<Model>()?;
    module.add_class::<Conversation>()?;
    module.add_class::<Stream>()?;
    module.add_class::<Generation>()?;
    Ok(())
}
