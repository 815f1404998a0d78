"""Which prompts are active: text prompts, named image prompts, the template, the limit, and
per-prompt thresholds.

No ROS in here. :class:`PromptBook` is the one owner of the active prompts. Every change (from a
topic, a service or a parameter) is a :class:`PromptChange`: it is checked against what is
active, its text prompts are embedded, and only then is the new state committed as a whole. A
refused change changes nothing: not the active set, not any stored image embedding.

Image prompts are expensive to embed (a full vision pass), so callers embed them first with
:meth:`PromptBook.embed_image` (no state touched; may run on any thread) and put the resulting
:class:`ImagePrompt` into the change. :meth:`PromptBook.check` refuses a change before that work
is spent.

Rules:
- text prompts are non-empty strings without surrounding whitespace and without duplicates;
- a name is either a text prompt or an image prompt, never both (two masks with one name would be
  ambiguous for every consumer);
- at most ``max_prompts`` prompts (text + image) are active;
- the template contains ``{}`` exactly once; it applies to text prompts and to the text mixed
  into an image prompt;
- an image prompt may carry a text: its embedding is then ``text_weight * text + (1 - text_weight)
  * image`` (CLIPSeg's text and visual embeddings share one space; the paper trained on such mixes);
- a per-prompt threshold is in [0, 1]; thresholds may name prompts that are not active (yet): they
  apply whenever a prompt of that name is.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field, replace
from typing import Mapping, Protocol, Sequence

import numpy as np
import torch

from clipseg_ros.core.model.preprocessing import as_rgb_uint8

DEFAULT_TEMPLATE = "{}"
DEFAULT_TEXT_WEIGHT = 0.5


class PromptError(ValueError):
    """A prompt change was refused; the message says why."""


@dataclass(frozen=True)
class PromptSet:
    """One consistent, immutable set of prompts and their conditional embeddings.

    ``names[i]`` is the prompt as given (text, or the image prompt's name); ``embeddings`` is
    (N, projection_dim) in the model's dtype and device, None when N = 0. Frames are segmented
    with one PromptSet, so a prompt change during inference never mixes sets.
    """

    names: tuple[str, ...] = ()
    embeddings: torch.Tensor | None = None
    warnings: tuple[str, ...] = ()
    thresholds: tuple[float | None, ...] = ()  # per name; None (or missing) = the caller's default

    def __len__(self) -> int:
        return len(self.names)

    def thresholds_or(self, default: float) -> tuple[float, ...]:
        """One threshold per prompt: its own, else ``default``."""
        own = self.thresholds + (None,) * (len(self.names) - len(self.thresholds))
        return tuple(float(default) if t is None else float(t) for t in own[:len(self.names)])


@dataclass(frozen=True)
class ImagePrompt:
    """An example image's conditional embedding (D,), under a name. ``embedding`` None: only
    the name is known yet (for :meth:`PromptBook.check` before embedding). ``prompt_image`` is
    the (h, w, 3) uint8 RGB image that was embedded: a newly loaded model embeds it again.
    ``source`` is whatever the prompt's keeper keeps of the example it came from (opaque here:
    :class:`clipseg_ros.core.prompts.keeper.PromptKeeper` puts the store's record of it on disk).
    ``text`` (optional) is mixed in with ``text_weight``."""

    name: str
    embedding: torch.Tensor | None = field(default=None, compare=False)
    prompt_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    source: object = field(default=None, compare=False, repr=False)
    text: str = ""
    text_weight: float = 0.0


@dataclass(frozen=True)
class PromptChange:
    """One change to the active prompts; a field left None keeps what is active.

    ``images`` replaces all image prompts; ``added_images`` adds image prompts or replaces the
    ones of the same names and keeps the rest.
    """

    texts: tuple[str, ...] | None = None
    images: tuple[ImagePrompt, ...] | None = None
    added_images: tuple[ImagePrompt, ...] = ()
    template: str | None = None
    max_prompts: int | None = None
    thresholds: Mapping[str, float] | None = None  # replaces all per-prompt thresholds
    added_thresholds: Mapping[str, float | None] = field(default_factory=dict)  # None: back to the default


@dataclass(frozen=True)
class PromptState:
    """What is active. ``prompt_set`` is None while no model is attached (prompts are then
    checked, and embedded when one is)."""

    texts: tuple[str, ...] = ()
    images: tuple[ImagePrompt, ...] = ()
    template: str = DEFAULT_TEMPLATE
    max_prompts: int = 32
    thresholds: tuple[tuple[str, float], ...] = ()  # (name, threshold), sorted by name
    prompt_set: PromptSet | None = field(default=None, compare=False)

    @property
    def names(self) -> tuple[str, ...]:
        return self.texts + tuple(image.name for image in self.images)

    def threshold_of(self, name: str) -> float | None:
        """The prompt's own threshold, None when it uses the default."""
        return dict(self.thresholds).get(name)

    def same_prompts(self, other: "PromptState") -> bool:
        """Whether both segment with the same embeddings (only thresholds or the limit differ):
        same texts and template, and image prompts with the same names, texts and weights whose
        embeddings are the very same tensors (an image re-taught under its name is a new one)."""
        return ((self.texts, self.images, self.template) == (other.texts, other.images, other.template)
                and all(a.embedding is b.embedding for a, b in zip(self.images, other.images)))


class Embedder(Protocol):
    """What the book needs from a model (:class:`clipseg_ros.core.model.engine.SegmentationEngine`)."""

    def embed_texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[str]]: ...

    def embed_image(self, image: np.ndarray) -> torch.Tensor: ...


# ---------------------------------------------------------------------- text rules per source
def tidy_texts(texts: Sequence[str]) -> list[str]:
    """Trimmed, empties and duplicates dropped (first occurrence kept)."""
    return list(dict.fromkeys(t for t in (str(t).strip() for t in texts) if t))


def parse_prompt_text(text: str) -> list[str]:
    """Prompts from one string (the ``~/prompts`` topic, the launch argument): separated by ';'
    or newlines, then :func:`tidy_texts`."""
    return tidy_texts(re.split(r"[;\n\r]+", text))


def texts_from_topic(text: str) -> tuple[str, ...]:
    """The ``~/prompts`` message's prompts; PromptError when it holds none (an empty message
    must not clear the prompts by accident)."""
    texts = parse_prompt_text(text)
    if not texts:
        raise PromptError(f"message {text[:40]!r} holds no prompt (empty, whitespace or separators only): "
                          "prompts unchanged. To clear them, call ~/set_prompts with an empty request or "
                          "set the prompts parameter to [].")
    return tuple(texts)


def texts_from_request(texts: Sequence[str]) -> tuple[str, ...]:
    """A service request's text prompts: trimmed, duplicates dropped; an empty entry is refused
    (an empty *request* is how prompts are cleared)."""
    empty = [i for i, t in enumerate(texts) if not str(t).strip()]
    if empty:
        raise PromptError(f"prompt {empty[0]} is empty (an empty request clears all prompts)")
    return tuple(tidy_texts(texts))


def texts_from_parameter(texts: Sequence[str] | None) -> tuple[str, ...]:
    """The ``prompts`` parameter's value, strictly: empty entries, surrounding whitespace and
    duplicates are refused rather than changed, so the parameter always equals what is active."""
    texts = [str(t) for t in (texts or [])]
    for i, t in enumerate(texts):
        if not t.strip():
            raise PromptError(f"prompt {i} is empty")
    dupes = sorted({t for t in texts if texts.count(t) > 1})
    if dupes:
        raise PromptError(f"duplicate prompts: {dupes}")
    if any(t != t.strip() for t in texts):
        raise PromptError("prompts must not start or end with whitespace")
    return tuple(texts)


def image_names_from_request(names: Sequence[str], image_count: int) -> tuple[str, ...]:
    """Names for a request's example images: one per image, trimmed, ``image_prompt_<i>`` for an
    empty one; PromptError for a count mismatch or duplicates."""
    if len(names) != image_count:
        raise PromptError(f"{image_count} image_prompts but {len(names)} image_prompt_names: give one name "
                          "per image")
    named = tuple((str(n).strip() or f"image_prompt_{i}") for i, n in enumerate(names))
    if len(set(named)) != len(named):
        raise PromptError(f"duplicate image prompt names: {list(named)}")
    return named


def validate_template(template: str) -> None:
    """A prompt template must contain exactly one ``{}`` where the prompt goes."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise PromptError(f"prompt template must contain '{{}}' exactly once, got {template!r}")


def check_threshold(name: str, value: float) -> float:
    """A per-prompt threshold as float; PromptError unless it is a number in [0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PromptError(f"threshold for '{name}' is not a number: {value!r}") from None
    if not (0.0 <= value <= 1.0):  # NaN fails too
        raise PromptError(f"threshold for '{name}' must be in [0, 1], got {value:g}")
    return value


def thresholds_from_parameter(entries: Sequence[str] | None) -> dict[str, float]:
    """The ``prompt_thresholds`` parameter: ``"name=value"`` entries (the last '=' separates,
    so a name may contain '='). PromptError for a malformed entry, a value outside [0, 1] or a
    name given twice."""
    found: dict[str, float] = {}
    for i, entry in enumerate(entries or []):
        name, sep, value = str(entry).rpartition("=")
        name = name.strip()
        if not sep or not name:
            raise PromptError(f"prompt_thresholds entry {i} {entry!r} is not 'name=value'")
        if name in found:
            raise PromptError(f"prompt_thresholds names '{name}' twice")
        found[name] = check_threshold(name, value.strip())
    return found


def thresholds_to_parameter(thresholds: Sequence[tuple[str, float]]) -> list[str]:
    """The ``prompt_thresholds`` parameter's value for ``PromptState.thresholds``: each value
    written so that it parses back to exactly the same float (``:g`` kept 6 digits, and the
    mirror's re-parse committed a second, different value)."""
    return [f"{name}={np.format_float_positional(float(value), unique=True, trim='-')}" for name, value in thresholds]


def check_text_weight(name: str, weight: float) -> float:
    try:
        weight = float(weight)
    except (TypeError, ValueError):
        raise PromptError(f"text weight for '{name}' is not a number: {weight!r}") from None
    if not (0.0 <= weight <= 1.0):
        raise PromptError(f"text weight for '{name}' must be in [0, 1], got {weight:g}")
    return weight


def apply_template(template: str, prompt: str) -> str:
    # str.replace, not str.format: a prompt or template with other braces must not raise.
    return template.replace("{}", prompt, 1)


# ---------------------------------------------------------------------- the owner
class PromptBook:
    """The active prompts and the only way to change them (thread-safe: changes are serialised,
    readers get an immutable :class:`PromptState`)."""

    def __init__(self, texts: Sequence[str] = (), template: str = DEFAULT_TEMPLATE, max_prompts: int = 32,
                 thresholds: Mapping[str, float] | None = None):
        self._lock = threading.Lock()
        self._embedder: Embedder | None = None
        self._state = PromptState(max_prompts=max_prompts)
        self._state = self._next_state(PromptChange(texts=tuple(texts), template=template,
                                                    thresholds=dict(thresholds or {})))

    @property
    def state(self) -> PromptState:
        return self._state

    @property
    def prompt_set(self) -> PromptSet | None:
        """What frames are segmented with now; None while no model is attached."""
        return self._state.prompt_set

    # -------------------------------------------------------------- model
    def attach(self, embedder: Embedder) -> PromptState:
        """Embed the active prompts with a newly loaded model (image prompts kept from before
        :meth:`detach` again from their example images) and use it for every later change.
        PromptError (nothing attached) if they cannot be embedded."""
        with self._lock:
            images = tuple(image if image.embedding is not None
                           else replace(image, embedding=embedder.embed_image(image.prompt_image))
                           for image in self._state.images)
            state = replace(self._state, images=images)
            state = replace(state, prompt_set=self._embed(embedder, state))
            self._embedder, self._state = embedder, state
            return state

    def detach(self) -> PromptState:
        """Forget the model (it is being unloaded): everything stays active; image prompts lose
        their embeddings (they belong to that model) and keep their prompt images, from which
        :meth:`attach` embeds them again."""
        with self._lock:
            self._embedder = None
            images = tuple(replace(image, embedding=None) for image in self._state.images
                           if image.prompt_image is not None)
            self._state = replace(self._state, images=images, prompt_set=None)
            return self._state

    def embed_image(self, name: str, prompt_image: np.ndarray, text: str = "",
                    text_weight: float = DEFAULT_TEXT_WEIGHT, source: object = None) -> ImagePrompt:
        """Embed a prompt image ((H, W[, 1|3|4]) uint8, used as given: an example image as sent,
        or the engineered image of a region) for a later change: a full vision pass that changes
        no state, so it may run on any thread. ``text`` (optional) is mixed in with
        ``text_weight`` when the prompt is used; ``source`` is carried along for the prompt's
        keeper. PromptError for a bad image or weight, or when no model is attached."""
        text = str(text).strip()
        weight = check_text_weight(name, text_weight) if text else 0.0
        embedder = self._embedder
        if embedder is None:
            raise PromptError(f"image prompt '{name}': no model is loaded (configure the node first)")
        try:
            pixels = np.ascontiguousarray(as_rgb_uint8(prompt_image))
            embedding = embedder.embed_image(pixels)
        except (PromptError, ValueError) as exc:
            raise PromptError(f"image prompt '{name}': {exc}") from exc
        return ImagePrompt(name, embedding, prompt_image=pixels, source=source, text=text, text_weight=weight)

    # -------------------------------------------------------------- changes
    def check(self, change: PromptChange) -> PromptState:
        """The state ``change`` would lead to, without embedding anything; PromptError if refused."""
        return self._next_state(change)

    def apply(self, change: PromptChange) -> PromptState:
        """Commit ``change`` as a whole, or raise PromptError and change nothing. Image prompts
        must come embedded (:meth:`embed_image`) when a model is attached."""
        with self._lock:
            state = self._next_state(change)
            if self._embedder is None and (change.images or change.added_images):
                raise PromptError("image prompts need a loaded model (configure the node first)")
            if self._embedder is not None:
                missing = [image.name for image in state.images if image.embedding is None]
                if missing:
                    raise PromptError(f"image prompts {missing} have no embedding: send their images")
                current = self._state
                if current.prompt_set is not None and state.same_prompts(current):
                    prompt_set = replace(current.prompt_set, thresholds=_thresholds_for(state))
                else:
                    prompt_set = self._embed(self._embedder, state)
                state = replace(state, prompt_set=prompt_set)
            self._state = state
            return state

    def _next_state(self, change: PromptChange) -> PromptState:
        current = self._state
        texts = current.texts if change.texts is None else tuple(change.texts)
        images = current.images if change.images is None else tuple(change.images)
        if change.added_images:
            added = {image.name: image for image in change.added_images}
            images = tuple(image for image in images if image.name not in added) + tuple(added.values())
        template = current.template if change.template is None else change.template
        max_prompts = current.max_prompts if change.max_prompts is None else int(change.max_prompts)
        validate_template(template)
        texts = texts_from_parameter(texts)
        image_names = [image.name for image in images]
        if len(set(image_names)) != len(image_names):
            raise PromptError(f"duplicate image prompt names: {image_names}")
        both = [name for name in image_names if name in texts]
        if both:
            raise PromptError(f"{both} would be both a text prompt and an image prompt: a name must be one or "
                              "the other (rename the image prompt or drop the text)")
        if len(texts) + len(images) > max_prompts:
            raise PromptError(f"{len(texts) + len(images)} prompts exceed max_prompts={max_prompts}")
        thresholds = dict(current.thresholds) if change.thresholds is None else {}
        for name, value in (change.thresholds or {}).items():
            thresholds[str(name)] = check_threshold(name, value)
        for name, value in change.added_thresholds.items():
            if value is None:
                thresholds.pop(str(name), None)
            else:
                thresholds[str(name)] = check_threshold(name, value)
        return PromptState(texts=texts, images=images, template=template, max_prompts=max_prompts,
                           thresholds=tuple(sorted(thresholds.items())), prompt_set=current.prompt_set)

    @staticmethod
    def _embed(embedder: Embedder, state: PromptState) -> PromptSet:
        names = state.names
        if not names:
            return PromptSet()
        mixed = [image for image in state.images if image.text]
        texts = [apply_template(state.template, t) for t in state.texts + tuple(i.text for i in mixed)]
        text_emb, warnings = embedder.embed_texts(texts)
        mixed_text = dict(zip((i.name for i in mixed), text_emb[len(state.texts):]))
        parts = [text_emb[:len(state.texts)]]
        for image in state.images:
            embedding = image.embedding.to(text_emb.dtype)
            if image.name in mixed_text:
                w = image.text_weight
                embedding = w * mixed_text[image.name] + (1.0 - w) * embedding
            parts.append(embedding[None])
        return PromptSet(names=names, embeddings=torch.cat(parts), warnings=tuple(warnings),
                         thresholds=_thresholds_for(state))


def _thresholds_for(state: PromptState) -> tuple[float | None, ...]:
    own = dict(state.thresholds)
    return tuple(own.get(name) for name in state.names)
