"""On-disk embedding cache, keyed by encoder identity and the SHA-256 of each text.

Layout: ``<directory>/<hash of identity>/`` holds ``identity.txt`` (readable) and shard
files ``shard-*.safetensors``, each with a ``keys`` tensor (uint8 [n, 32], text digests)
and an ``embeddings`` tensor (float32 [n, dim]). Shards are written to a temporary file
and renamed into place (``agentfast.atomic_files``), so a write that is killed leaves no
partial shard behind, and its temporary file is removed by the next write. Shards that
cannot be read (copied half-way, disk errors) are reported with a warning and ignored.

Many processes may use one cache at once. Readers need no lock: a shard appears whole or
not at all, and one merged away by ``compact`` while a reader looks is found in the merged
shard. Computing is serialised per encoder by a lock file (``.lock``, ``flock``): a
``CachedEncoder`` takes it, looks again, computes only what is still missing and writes it
before letting go, so a second ``agentfast embed`` over the same texts waits for the first
and reuses its work instead of computing everything a second time.

``<directory>/encoders/<hash of signature>.json`` remembers the identity and dimension of a
local encoder named by its files (``TextEncoder.files_signature``), so a run whose texts
are all cached needs neither the model nor transformers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch

from ..atomic_files import atomic_write, atomic_write_text
from ..errors import accessing

try:
    import fcntl
except ImportError:  # no flock (Windows): processes may compute the same texts twice
    fcntl = None  # type: ignore[assignment]

SHARD_GLOB = "shard-*.safetensors"
LOCK_FILE = ".lock"
FORMAT_VERSION = "1"
CACHE_ENV = "AGENTFAST_CACHE"


def default_cache_dir() -> Path:
    """``$AGENTFAST_CACHE`` when set, else ``~/.cache/agentfast/embeddings``."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "agentfast" / "embeddings"


def text_key(text: str) -> bytes:
    """The cache key of a text: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).digest()


class EmbeddingCache:
    """Embeddings stored per encoder identity; lookups see shards written by other processes."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()
        self._rows: dict[str, dict[bytes, torch.Tensor]] = {}
        self._loaded_shards: dict[str, set[str]] = {}

    def identity_dir(self, identity: str) -> Path:
        return self.directory / hashlib.sha256(identity.encode()).hexdigest()[:32]

    def get_many(self, identity: str, texts: Sequence[str]) -> list[torch.Tensor | None]:
        """The cached embedding of each text, or None where it is not cached."""
        rows = self._refresh(identity)
        return [rows.get(text_key(text)) for text in texts]

    def put_many(self, identity: str, texts: Sequence[str], embeddings: torch.Tensor) -> Path | None:
        """Store embeddings [len(texts), dim] as one new shard; returns its path (None if empty)."""
        if len(texts) != embeddings.shape[0]:
            raise ValueError(f"{len(texts)} texts but {embeddings.shape[0]} embeddings")
        if not texts:
            return None
        keys = [text_key(t) for t in texts]
        embeddings = embeddings.detach().to("cpu", torch.float32).contiguous()
        final = self._write_shard(identity, keys, embeddings)
        rows = self._rows.setdefault(identity, {})
        for key, row in zip(keys, embeddings):
            rows[key] = row
        self._loaded_shards.setdefault(identity, set()).add(final.name)
        return final

    def recall_encoder(self, signature: str) -> tuple[str, int] | None:
        """The (identity, dim) remembered for an encoder files signature, if any."""
        path = self._encoder_record(signature)
        try:
            record = json.loads(path.read_text())
            if record["signature"] == signature:
                return str(record["identity"]), int(record["dim"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"ignoring the unreadable encoder record {path} ({error})", stacklevel=3)
        return None

    def remember_encoder(self, signature: str, identity: str, dim: int) -> None:
        path = self._encoder_record(signature)
        record = {"signature": signature, "identity": identity, "dim": int(dim)}
        atomic_write_text(path, json.dumps(record, indent=1) + "\n")

    def _encoder_record(self, signature: str) -> Path:
        return self.directory / "encoders" / f"{hashlib.sha256(signature.encode()).hexdigest()[:32]}.json"

    def size(self, identity: str) -> int:
        """Number of distinct texts cached for ``identity``."""
        return len(self._refresh(identity))

    def compact(self, identity: str) -> Path | None:
        """Merge all shards of ``identity`` into one (fewer files to open on later runs).

        The merged shard is in place before the old ones go, so a reader looking meanwhile
        finds every row in one or the other."""
        with self.lock(identity):
            rows = self._refresh(identity)
            old = sorted(self._loaded_shards.get(identity, set()))
            if not rows:
                return None
            keys = list(rows)
            merged = self._write_shard(identity, keys, torch.stack([rows[k] for k in keys]))
            folder = self.identity_dir(identity)
            for name in old:
                with accessing(folder / name, "remove"):
                    (folder / name).unlink(missing_ok=True)
            self._loaded_shards[identity] = {merged.name}
            return merged

    @contextlib.contextmanager
    def lock(self, identity: str) -> Iterator[None]:
        """Hold the cache's lock for ``identity`` (other processes' ``lock`` calls wait)."""
        folder = self.identity_dir(identity)
        with accessing(folder, "write the embedding cache in"):
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the lock

    def _write_shard(self, identity: str, keys: list[bytes], embeddings: torch.Tensor) -> Path:
        """Write one shard atomically (``agentfast.atomic_files``)."""
        from safetensors.torch import save_file

        folder = self.identity_dir(identity)
        label = folder / "identity.txt"
        if not label.exists():
            atomic_write_text(label, identity + "\n")
        tensors = {
            "keys": torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(len(keys), 32),
            "embeddings": embeddings.contiguous(),
        }
        metadata = {"identity": identity, "format": FORMAT_VERSION}
        # readers see the whole shard or none of it
        return atomic_write(folder / f"shard-{uuid.uuid4().hex}.safetensors",
                            lambda temporary: save_file(tensors, temporary, metadata=metadata))

    def _refresh(self, identity: str) -> dict[bytes, torch.Tensor]:
        """Load shards that appeared since the last look (other runs may have added some).

        A shard that vanishes between the listing and the read was merged into a newer one
        by ``compact``: the folder is listed again until a look finds none vanished."""
        rows = self._rows.setdefault(identity, {})
        seen = self._loaded_shards.setdefault(identity, set())
        folder = self.identity_dir(identity)
        vanished = True
        while vanished and folder.is_dir():
            vanished = False
            for shard in sorted(folder.glob(SHARD_GLOB)):
                if shard.name in seen:
                    continue
                loaded = self._read_shard(shard, identity)
                if loaded is _VANISHED:
                    vanished = True
                    continue
                seen.add(shard.name)
                if loaded is not None:
                    keys, embeddings = loaded
                    raw = keys.numpy().tobytes()
                    for i in range(keys.shape[0]):
                        rows[raw[32 * i:32 * (i + 1)]] = embeddings[i]
        return rows

    @staticmethod
    def _read_shard(shard: Path, identity: str) -> Any:
        """(keys, embeddings); None for a shard that cannot be used (with a warning);
        ``_VANISHED`` for one removed since it was listed."""
        from safetensors import safe_open

        try:
            with safe_open(str(shard), framework="pt") as handle:
                stored = (handle.metadata() or {}).get("identity")
                keys = handle.get_tensor("keys")
                embeddings = handle.get_tensor("embeddings")
        except Exception as error:
            if not shard.exists():
                return _VANISHED  # a damaged file must not stop training; say so and move on
            warnings.warn(f"ignoring unreadable embedding cache shard {shard}: {error}", stacklevel=4)
            return None
        if stored != identity:
            warnings.warn(f"ignoring cache shard {shard}: written for encoder {stored!r}, "
                          f"not {identity!r}", stacklevel=4)
            return None
        if keys.ndim != 2 or keys.shape[1] != 32 or embeddings.shape[0] != keys.shape[0]:
            warnings.warn(f"ignoring cache shard {shard}: inconsistent shapes", stacklevel=4)
            return None
        return keys, embeddings.float()


_VANISHED = object()


class _Encoder(Protocol):
    @property
    def dim(self) -> int: ...

    @property
    def identity(self) -> str: ...

    def encode(self, texts: list[str], *, progress: bool = True) -> torch.Tensor: ...


class CachedEncoder:
    """An encoder whose results are cached on disk; hits skip the wrapped encoder.

    ``hits`` and ``misses`` count distinct texts per call to ``encode``. An encoder with a
    ``files_signature`` (a lazy local ``TextEncoder``) is named from the cache's record of
    it, so it loads only when some text is missing.
    """

    def __init__(self, encoder: _Encoder, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.encoder = encoder
        self.cache = EmbeddingCache(cache_dir)
        self.hits = 0
        self.misses = 0
        self._named: tuple[str, int] | None = None

    @property
    def dim(self) -> int:
        return self._name()[1]

    @property
    def identity(self) -> str:
        return self._name()[0]

    def _name(self) -> tuple[str, int]:
        if self._named is None:
            signature = getattr(self.encoder, "files_signature", None)
            self._named = self.cache.recall_encoder(signature) if signature else None
            if self._named is None:
                self._named = (self.encoder.identity, int(self.encoder.dim))
                if signature:
                    self.cache.remember_encoder(signature, *self._named)
        return self._named

    @property
    def truncated_count(self) -> int:
        return getattr(self.encoder, "truncated_count", 0)

    def encode(self, texts: Sequence[str], *, progress: bool = True) -> torch.Tensor:
        """Embed ``texts`` (float32 [N, dim], CPU), computing only the ones not cached.

        Missing texts are computed under the cache's lock, after a second look: what another
        process computed meanwhile is read, not computed again."""
        texts = list(texts)
        unique = list(dict.fromkeys(texts))
        identity = self.identity
        found = self.cache.get_many(identity, unique)
        by_text = {text: row for text, row in zip(unique, found) if row is not None}
        missing = [text for text in unique if text not in by_text]
        if missing:
            with self.cache.lock(identity):
                found = self.cache.get_many(identity, missing)
                by_text.update((text, row) for text, row in zip(missing, found) if row is not None)
                missing = [text for text in missing if text not in by_text]
                if missing:
                    fresh = self.encoder.encode(missing, progress=progress)
                    self.cache.put_many(identity, missing, fresh)
                    by_text.update(zip(missing, fresh))
        self.hits += len(unique) - len(missing)
        self.misses += len(missing)
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([by_text[text] for text in texts]).float()

    def __repr__(self) -> str:
        return f"CachedEncoder({self.encoder!r}, cache_dir={str(self.cache.directory)!r})"
