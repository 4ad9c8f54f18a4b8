"""``WatermarkService``: what the gateway, the backends and forensics call.

It owns the key ring and the configured scheme. ``sampler_for`` gives the backend the
request's ``RowSampler`` and the record that goes into ``RequestEvent.watermark``;
``detect_text`` / ``detect_tokens`` test text under every key id and cohort. The
scheme, its parameters and the key are chosen here from server settings only: no
request field reaches this module.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from distillguard.watermark import detector
from distillguard.watermark.base import RowSampler
from distillguard.watermark.keyed import KeyedPartition
from distillguard.watermark.keys import KEY_FILE_NAME, KeyRing, KeyRingError, WatermarkKey
from distillguard.watermark.registry import SCHEMES
from distillguard.watermark.schemes import Scheme, get_scheme, sample_plain

if TYPE_CHECKING:
    import torch  # annotations only: detection runs without torch

log = logging.getLogger(__name__)

RECORD_VERSION = 1
NORMALIZATIONS = ("", "NFC", "NFKC")
_PARTITION_CACHE = 64  # ~400 kB each at a 49,152 vocabulary
_RELOAD_CHECK_S = 1.0


class PlainSampler:
    """The unwatermarked ``RowSampler``: the request's own temperature and top-p, argmax
    when greedy, else a softmax draw."""

    tally: dict[str, Any] | None = None

    def effective(self, temperature: float, top_p: float) -> tuple[float, float]:
        return float(temperature), float(top_p)

    def for_row(self, sampled: bool, max_tokens: int | None = None) -> RowSampler:
        return self

    def bias_row(self, context: np.ndarray, logits: torch.Tensor,
                 scale: float = 1.0) -> torch.Tensor:
        return logits

    def draw_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                 generator: torch.Generator | None, reference: int | None = None) -> int:
        return sample_plain(logits, greedy, generator)

    def sample_row(self, context: np.ndarray, logits: torch.Tensor, greedy: bool,
                   generator: torch.Generator | None) -> int:
        return sample_plain(logits, greedy, generator)


def scheme_from_settings(settings: Any) -> Scheme | None:
    """The scheme named by ``watermark_scheme`` with its ``watermark_*`` parameters.

    Each parameter of the scheme is read from the setting ``watermark_<scheme>_<param>``
    or else ``watermark_<param>`` when one exists, so a new scheme needs no code here.
    ``none`` gives None.
    """
    name = settings.watermark_scheme
    if name == "none":
        return None
    if name not in SCHEMES:
        raise ValueError(f"watermark_scheme {name!r} is not one of: none, "
                         f"{', '.join(SCHEMES.names())}")
    defaults = SCHEMES.get(name)().params
    params = {}
    for param in defaults:
        for setting in (f"watermark_{name}_{param}", f"watermark_{param}"):
            value = settings.values.get(setting)
            if value is not None:
                params[param] = value
                break
    return get_scheme(name, **params)


class WatermarkService:
    """Keys + scheme: samplers for generation, detectors for text and token ids."""

    def __init__(self, ring: KeyRing, scheme: Scheme | None, *, tokenizer: Any = None,
                 tokenizer_path: Path | _LazyEmbedded | None = None, normalize: str = "",
                 vocab_size: int = 49_152, cohorts: int | None = None) -> None:
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        self.ring = ring
        self.scheme = scheme
        self.normalize = normalize
        self.vocab_size = vocab_size
        self.cohorts = cohorts  # for keys created by ``rotate``; None: as the active key
        self._tokenizer = tokenizer
        self._tokenizer_path = tokenizer_path
        self._lock = threading.Lock()
        self._partitions: collections.OrderedDict[tuple[str, str, int], KeyedPartition] = (
            collections.OrderedDict())
        self._next_reload_check = 0.0

    @classmethod
    def from_settings(cls, settings: Any, *, tokenizer: Any = None,
                      create: bool = True) -> WatermarkService:
        """Build from settings; creates ``DATA/watermark.key`` (0600) when ``create``.

        With ``watermark_master_secret`` set, the key file is neither read nor written.
        ``KeyRingError`` says what is wrong when keys cannot be had.
        """
        cohorts = int(settings.watermark_cohorts)
        secret = settings.watermark_master_secret
        if secret:
            ring = KeyRing.from_setting(secret.reveal(), cohorts)
        else:
            path = settings.data_path / KEY_FILE_NAME
            ring = KeyRing.load_or_create(path, cohorts) if create else KeyRing.load(path)
        tokenizer_path: Path | _LazyEmbedded | None = None
        if tokenizer is None and settings.local_model_path:
            tokenizer_path = Path(settings.local_model_path)
        elif tokenizer is None:
            cache = Path(settings.model_cache_dir) if settings.model_cache_dir else None
            tokenizer_path = _LazyEmbedded(cache)
        return cls(ring, scheme_from_settings(settings), tokenizer=tokenizer,
                   tokenizer_path=tokenizer_path, normalize=settings.watermark_normalize,
                   cohorts=cohorts)

    # ----- keys -------------------------------------------------------------------------

    def keys(self) -> list[dict[str, Any]]:
        """Public facts of every key id (never secrets), the active one flagged."""
        self._maybe_reload(force=True)
        return [{**k.public(), "active": k.key_id == self.ring.active.key_id}
                for k in self.ring]

    def rotate(self) -> dict[str, Any]:
        """Create a new active key id; old ids stay usable for detection."""
        with self._lock:
            key = self.ring.rotate(self.cohorts)
        return {**key.public(), "active": True}

    def _maybe_reload(self, force: bool = False) -> None:
        # A rotation by `distillguard wm keys rotate` rewrites the key file; a running
        # server picks the new active key up within a second.
        now = time.monotonic()
        if not force and now < self._next_reload_check:
            return
        self._next_reload_check = now + _RELOAD_CHECK_S
        if self.ring.changed_on_disk():
            try:
                ring = KeyRing.load(self.ring.path)  # type: ignore[arg-type]
            except KeyRingError as exc:
                log.error("keeping the loaded watermark keys: %s", exc)
                return
            with self._lock:
                self.ring = ring
            log.info("watermark keys reloaded; active key id %s", ring.active.key_id)

    def partition(self, key: WatermarkKey, scheme: str, cohort: int) -> KeyedPartition:
        """The keyed function of one key id, scheme and cohort (cached)."""
        cache_key = (key.key_id, scheme, cohort)
        with self._lock:
            part = self._partitions.get(cache_key)
            if part is not None:
                self._partitions.move_to_end(cache_key)
                return part
        part = KeyedPartition(key.partition_key(scheme, cohort), self.vocab_size)
        with self._lock:
            self._partitions[cache_key] = part
            # room for every (key id, cohort) of the ring, so detection never thrashes
            limit = max(_PARTITION_CACHE, 2 * sum(k.cohorts for k in self.ring))
            while len(self._partitions) > limit:
                self._partitions.popitem(last=False)
        return part

    # ----- generation -------------------------------------------------------------------

    def sampler_for(self, account: str | None, *,
                    strength: float = 1.0) -> tuple[RowSampler, dict[str, Any] | None]:
        """The request's ``RowSampler`` and its event record (None when disabled).

        The record's ``tokens`` (see ``base.new_tally``) fills in as the backend draws:
        how many tokens were drawn, keyed, and drawn where the watermark could act. A
        backend that cannot watermark (upstream) leaves them at 0.

        ``strength`` >= 1 strengthens the watermark (policy "degrade"); values below 1
        are raised to 1, so nothing can weaken it.
        """
        if self.scheme is None:
            return PlainSampler(), None
        self._maybe_reload()
        key = self.ring.active
        cohort = key.cohort_of(account)
        scheme = self.scheme
        if strength > 1.0:
            scheme = scheme.with_strength(strength)
        sampler = scheme.sampler(self.partition(key, scheme.name, cohort))
        # ``tokens`` is the sampler's own tally, filled in while the backend generates,
        # so the event (written after the response) says where the watermark could act.
        record = {"version": RECORD_VERSION, "scheme": scheme.name, "key_id": key.key_id,
                  "cohort": cohort, "cohorts": key.cohorts, "params": scheme.params,
                  "tokens": sampler.tally}
        return sampler, record

    # ----- detection --------------------------------------------------------------------

    def detect_tokens(self, ids: Sequence[int] | np.ndarray, *,
                      record: dict[str, Any] | None = None,
                      scheme: Scheme | None = None) -> dict[str, Any]:
        """Test token ids; named statistics plus the key id and cohort found.

        Without ``record``: every key id x every cohort under the configured scheme (or
        ``scheme``), with ``p_value`` corrected for the number tried. With ``record`` (a
        ``RequestEvent.watermark``): exactly that scheme, parameters, key and cohort.
        """
        self._maybe_reload()
        if record is not None:
            scheme = get_scheme(record["scheme"], **record["params"])
            key = self.ring.get(record["key_id"])
            cohort = int(record["cohort"])
            candidates = [detector.Candidate(key.key_id, cohort,
                                             self.partition(key, scheme.name, cohort))]
        else:
            scheme = scheme or self.scheme
            if scheme is None:
                raise ValueError("watermark_scheme is none: name a scheme to detect with")
            candidates = self.candidates(scheme.name)
        return detector.detect(ids, scheme, candidates)

    def candidates(self, scheme: str) -> list[detector.Candidate]:
        """Every (key id, cohort) of the ring, keyed for ``scheme``."""
        return [detector.Candidate(k.key_id, c, self.partition(k, scheme, c))
                for k in self.ring for c in range(k.cohorts)]

    def tokenize(self, text: str, *, normalize: str | None = None) -> list[int]:
        """Token ids of ``text`` after optional Unicode normalisation (NFC / NFKC)."""
        form = self.normalize if normalize is None else normalize
        if form not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {form!r}")
        if form:
            text = unicodedata.normalize(form, text)
        # verbose=False: texts longer than the model's context are fine to score.
        return list(self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    def detect_text(self, text: str, *, normalize: str | None = None,
                    record: dict[str, Any] | None = None,
                    scheme: Scheme | None = None) -> dict[str, Any]:
        """Tokenise ``text`` with the model's tokenizer and ``detect_tokens`` it."""
        result = self.detect_tokens(self.tokenize(text, normalize=normalize),
                                    record=record, scheme=scheme)
        result["normalized"] = (self.normalize if normalize is None else normalize) or None
        return result

    @property
    def tokenizer(self) -> Any:
        """The detection tokenizer, loaded on first use."""
        if self._tokenizer is None:
            path = self._tokenizer_path
            if isinstance(path, _LazyEmbedded):
                path = path.resolve()
            self._tokenizer = load_tokenizer(Path(str(path)))
        return self._tokenizer


class _FastTokenizer:
    """A ``tokenizers.Tokenizer`` called the way a transformers tokenizer is."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __call__(self, text: str, *, add_special_tokens: bool = True,
                 verbose: bool = True) -> dict[str, list[int]]:
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return {"input_ids": list(encoding.ids)}


def load_tokenizer(folder: Path) -> Any:
    """The tokenizer in ``folder``: transformers' when it is installed (the ``local``
    extra), else the folder's ``tokenizer.json`` through the ``tokenizers`` package, which
    a lean install has (both run the same fast tokenizer for the models we serve)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise RuntimeError(f"no tokenizer.json in {folder}: detection without "
                               "transformers needs one (or pip install "
                               "'distillguard[local]')") from None
        from tokenizers import Tokenizer

        return _FastTokenizer(Tokenizer.from_file(str(file)))
    return AutoTokenizer.from_pretrained(str(folder))


class _LazyEmbedded:
    """The embedded model's folder, converted only when a tokenizer is really needed."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir

    def resolve(self) -> Path:
        from distillguard.backends.model_cache import ensure_converted

        try:
            return ensure_converted(self.cache_dir)
        except ImportError as exc:
            # A converted folder is reused without transformers; converting needs it.
            raise RuntimeError(
                f"the embedded model's tokenizer must be converted from its GGUF file once, "
                f"which needs {exc.name} (pip install 'distillguard[local]'); or set "
                "local_model_path to the served model's folder (with tokenizer.json)"
            ) from None
