"""imp: Imp multimodal models (MILVLG, arXiv 2405.12107) on CPUs, from Python.

A thin layer over the imp Rust crate. The GIL is released while imp works, so Python threads
generating at once (with one model, or several) run in parallel. Ctrl-C stops a generation.
"""

import os
from typing import Any, Iterator, Literal, Optional, Sequence, Union, final, overload

__all__ = ["Conversation", "Generation", "ImpError", "Model", "Stream", "__version__"]

__version__: str

_ImageLike = Union[str, "os.PathLike[str]", bytes, bytearray, Any]
"""A path, the bytes of an image file (PNG, JPEG, WebP, GIF, BMP, TIFF), a ``PIL.Image.Image``
(any mode, converted to RGB) or an ``HxWx3`` ``uint8`` numpy array."""

class ImpError(Exception):
    """imp could not use a model, image or prompt; the message says which and why.

    Bad arguments raise ``ValueError`` or ``TypeError``, a missing file ``FileNotFoundError``."""

@final
class Generation:
    """What a generation produced; ``str()`` gives the text."""

    text: str
    tokens: list[int]
    """Generated token ids, without the stop token."""
    finish_reason: Literal["stop", "length"]
    """``"stop"``: a stop token or string; ``"length"``: ``max_new_tokens`` or the context limit."""
    prompt_tokens: int
    """Tokens of the spliced prompt: text tokens plus image rows."""
    image_tokens: int
    cached_tokens: int
    """Prompt tokens taken from a conversation's cache rather than computed again."""
    time_to_first_token: float
    """Seconds from preprocessing the images to the first token."""
    decode_tokens_per_second: float

@final
class Stream(Iterator[str]):
    """The answer's text piece by piece, as it is generated (never half a character, never the
    start of a stop string). Closing or dropping it stops the generation."""

    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    def close(self) -> None:
        """Stops the generation; a conversation keeps none of this answer."""
    @property
    def result(self) -> Optional[Generation]:
        """The details, once the last piece has been read; ``None`` before."""

@final
class Model:
    """A loaded model: immutable weights shared by every generation, conversation and thread."""

    def __new__(
        cls,
        path: Union[str, "os.PathLike[str]"],
        *,
        dtype: Literal["f32", "f16", "bf16"] = "f32",
        quant: Optional[str] = None,
        llm_quant: Optional[str] = None,
        vision_quant: Optional[str] = None,
        projector_quant: Optional[str] = None,
        image_size: Optional[int] = None,
        pool: int = 1,
        lora: Optional[Union[str, "os.PathLike[str]"]] = None,
        kv_cache: Optional[Literal["f32", "f16", "bf16", "q8"]] = None,
        threads: Optional[int] = None,
        offline: Optional[bool] = None,
    ) -> "Model":
        """Loads a model folder, a ``.gguf`` file or a Hugging Face repo id (downloaded into the
        Hugging Face cache unless ``offline`` or ``HF_HUB_OFFLINE``).

        ``quant`` (``"q4_k"``, ``"q8_0"``, ...) quantizes as the weights are read; ``llm_quant``,
        ``vision_quant`` and ``projector_quant`` set one part. ``image_size`` runs the vision
        tower at that many pixels a side, ``pool`` averages ``pool x pool`` patches (both reduce
        the visual tokens). ``lora`` is an adapter folder of ``imp train``. ``kv_cache`` stores the
        attention keys and values in f32, f16 (the default), bf16 or q8. ``threads`` gives
        the model worker threads of its own (default: one shared pool, a thread per core)."""
    @overload
    def generate(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[False] = False,
    ) -> str:
        """Answers ``prompt`` about ``images`` in a fresh context, as ``imp run`` does: without
        ``<image>`` markers in the prompt, one per image goes before it. The defaults are
        ``imp run``'s: greedy (``temperature`` 0), up to 512 tokens. Returns the text, a
        :class:`Generation` with ``details=True``, or a :class:`Stream` with ``stream=True``."""
    @overload
    def generate(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[True],
    ) -> Generation: ...
    @overload
    def generate(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[True],
        details: bool = False,
    ) -> Stream: ...
    @overload
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[False] = False,
    ) -> str:
        """Answers chat messages in OpenAI's shape: ``{"role": "system" | "user" |
        "assistant", "content": str | [{"type": "text", "text": ...}, {"type": "image_url",
        "image_url": {"url": ...}}]}``, the last from the user. An image URL is a ``data:``
        URL, a ``file://`` URL or a path; imp_rs never downloads."""
    @overload
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[True],
    ) -> Generation: ...
    @overload
    def chat(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[True],
        details: bool = False,
    ) -> Stream: ...
    def conversation(self) -> "Conversation":
        """A multi-turn conversation whose turns reuse the cache of the turns before."""
    @property
    def variant(self) -> str:
        """The released model this checkpoint is laid out as."""
    @property
    def image_tokens(self) -> int:
        """Rows each image takes in the prompt."""
    @property
    def max_context(self) -> int:
        """The longest prompt plus answer, in tokens."""

@final
class Conversation:
    """One conversation with a model: its turns, images and cache; one question at a time."""

    @overload
    def ask(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[False] = False,
    ) -> str:
        """Asks ``prompt`` about ``images`` (new to this turn) as the next turn; options and
        results as :meth:`Model.generate`. A failed or stopped turn leaves the conversation as
        it was."""
    @overload
    def ask(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[False] = False,
        details: Literal[True],
    ) -> Generation: ...
    @overload
    def ask(
        self,
        prompt: str,
        images: Optional[Sequence[_ImageLike]] = None,
        *,
        max_new_tokens: int = 512,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Optional[Sequence[str]] = None,
        stream: Literal[True],
        details: bool = False,
    ) -> Stream: ...
    def reset(self) -> None:
        """Forgets the turns so far; the cache's memory is kept."""
    @property
    def turns(self) -> list[tuple[str, str]]:
        """``(question, answer)`` of every turn so far."""
