import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from agentfast.atomic_files import TEMP_SUFFIX
from agentfast.data import CachedEncoder, EmbeddingCache, default_cache_dir
from tests.fake_encoders import HashEncoder, tiny_encoder


REPO = Path(__file__).resolve().parents[1]  # so a child process imports this checkout


def test_miss_then_hit_skips_the_encoder(tmp_path):
    inner = HashEncoder()
    encoder = CachedEncoder(inner, tmp_path)
    first = encoder.encode(["a", "b", "a"], progress=False)
    assert (encoder.hits, encoder.misses) == (0, 2) and inner.calls == [["a", "b"]]
    second = encoder.encode(["b", "c", "a"], progress=False)
    assert (encoder.hits, encoder.misses) == (2, 3) and inner.calls[-1] == ["c"]
    assert torch.equal(first[0], HashEncoder.vector("a")) and torch.equal(first[2], first[0])
    assert torch.equal(second, torch.stack([HashEncoder.vector(t) for t in "bca"]))


def test_cache_is_shared_across_instances_but_not_across_encoders(tmp_path):
    CachedEncoder(HashEncoder(), tmp_path).encode(["x", "y"], progress=False)
    again = CachedEncoder(HashEncoder(), tmp_path)  # a later run, same encoder
    again.encode(["x", "y"], progress=False)
    assert (again.hits, again.misses) == (2, 0) and again.encoder.calls == []
    other = CachedEncoder(HashEncoder(tag="other"), tmp_path)
    other.encode(["x"], progress=False)
    assert (other.hits, other.misses) == (0, 1)


def test_cached_tiny_gpt2_matches_uncached(tmp_path):
    encoder = tiny_encoder("mean")
    texts = ["the code fails", "hello world"]
    cached = CachedEncoder(encoder, tmp_path)
    cold = cached.encode(texts, progress=False)
    warm = CachedEncoder(tiny_encoder("mean"), tmp_path).encode(texts, progress=False)
    torch.testing.assert_close(cold, encoder.encode(texts, progress=False))
    assert torch.equal(cold, warm)


def test_killed_write_leaves_no_shard_and_the_cache_keeps_working(tmp_path):
    # A writer process dies half-way through saving a shard (os._exit: no cleanup runs).
    script = textwrap.dedent(f"""
        import os, torch, safetensors.torch as st
        from agentfast.data import EmbeddingCache
        def dying_save(tensors, filename, metadata=None):
            with open(filename, "wb") as f:
                f.write(b"partial")
            os._exit(9)
        st.save_file = dying_save
        EmbeddingCache({str(tmp_path)!r}).put_many("enc", ["a", "b"], torch.ones(2, 4))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO)
    assert result.returncode == 9
    assert list(tmp_path.rglob("shard-*.safetensors")) == []  # only a hidden temp file remains
    assert len(list(tmp_path.rglob(f".*{TEMP_SUFFIX}"))) == 1
    cache = EmbeddingCache(tmp_path)
    assert cache.get_many("enc", ["a", "b"]) == [None, None]
    cache.put_many("enc", ["a"], torch.full((1, 4), 2.0))
    assert torch.equal(EmbeddingCache(tmp_path).get_many("enc", ["a"])[0], torch.full((4,), 2.0))
    assert list(tmp_path.rglob(f".*{TEMP_SUFFIX}")) == []  # the next write removed it


_EMBED_ONCE = """
import json, sys, time
from pathlib import Path
from agentfast.data import CachedEncoder
from tests.fake_encoders import HashEncoder

role, cache, flags = sys.argv[1], sys.argv[2], Path(sys.argv[3])
texts = [f"text {i}" for i in range(50)]

class Slow(HashEncoder):
    def encode(self, texts, *, progress=True):
        (flags / "a-computing").touch()
        for _ in range(600):  # until the second process has started its encode call
            if (flags / "b-started").exists():
                break
            time.sleep(0.05)
        time.sleep(1.0)  # still computing while the second one looks at the cache
        return super().encode(texts, progress=progress)

encoder = Slow()
if role == "b":
    while not (flags / "a-computing").exists():
        time.sleep(0.05)
    (flags / "b-started").touch()
vectors = CachedEncoder(encoder, cache)
out = vectors.encode(texts, progress=False)
print(json.dumps({"computed": sum(len(c) for c in encoder.calls), "hits": vectors.hits,
                  "sum": float(out.sum())}))
"""


def test_a_second_process_reuses_what_the_first_is_computing(tmp_path):
    """Two runs embed the same texts at once: the second waits on the cache's lock, then
    reads the first one's work instead of computing it again."""
    flags = tmp_path / "flags"
    flags.mkdir()
    runs = {role: subprocess.Popen([sys.executable, "-c", _EMBED_ONCE, role, str(tmp_path / "cache"),
                                    str(flags)], cwd=REPO, stdout=subprocess.PIPE, text=True)
            for role in ("a", "b")}
    results = {}
    for role, process in runs.items():
        out, _ = process.communicate(timeout=300)
        assert process.returncode == 0
        results[role] = json.loads(out)
    assert results["a"]["computed"] == 50 and results["b"]["computed"] == 0
    assert results["b"]["hits"] == 50 and results["a"]["sum"] == results["b"]["sum"]
    assert len(list((tmp_path / "cache").rglob("shard-*.safetensors"))) == 1


def test_readers_find_rows_a_compaction_moves_while_they_look(tmp_path, monkeypatch):
    """A shard merged away between a reader's listing and its read is found in the merged
    shard, without a warning and without a miss."""
    writer = EmbeddingCache(tmp_path)
    for i, text in enumerate("abc"):
        writer.put_many("enc", [text], torch.full((1, 4), float(i)))
    reader = EmbeddingCache(tmp_path)
    real_read = EmbeddingCache._read_shard
    compacted = []

    def read_after_compaction(shard, identity):
        if not compacted:
            compacted.append(writer.compact("enc"))
        return real_read(shard, identity)

    monkeypatch.setattr(EmbeddingCache, "_read_shard", staticmethod(read_after_compaction))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = reader.get_many("enc", list("abc"))
    assert [float(r[0]) for r in rows] == [0.0, 1.0, 2.0]


def test_damaged_shard_is_ignored_with_a_warning(tmp_path):
    cache = EmbeddingCache(tmp_path)
    good = cache.put_many("enc", ["a"], torch.ones(1, 4))
    (good.parent / "shard-damaged.safetensors").write_bytes(good.read_bytes()[:20])
    with pytest.warns(UserWarning, match="ignoring unreadable embedding cache shard"):
        rows = EmbeddingCache(tmp_path).get_many("enc", ["a", "b"])
    assert torch.equal(rows[0], torch.ones(4)) and rows[1] is None


def test_compact_merges_shards(tmp_path):
    cache = EmbeddingCache(tmp_path)
    for i, text in enumerate("abc"):
        cache.put_many("enc", [text], torch.full((1, 3), float(i)))
    merged = cache.compact("enc")
    assert [p.name for p in merged.parent.glob("shard-*")] == [merged.name]
    fresh = EmbeddingCache(tmp_path)
    assert fresh.size("enc") == 3
    assert torch.equal(fresh.get_many("enc", ["c"])[0], torch.full((3,), 2.0))


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTFAST_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("AGENTFAST_CACHE")
    assert default_cache_dir().parts[-3:] == (".cache", "agentfast", "embeddings")


def _embed_lazily(model_dir: Path, cache_dir: Path, texts: list[str]):
    from agentfast.data import TextEncoder

    encoder = TextEncoder(str(model_dir), lazy=True)
    cached = CachedEncoder(encoder, cache_dir)
    return encoder, cached, cached.encode(texts, progress=False)


def test_a_lazy_local_encoder_loads_only_when_a_text_is_missing(tmp_path):
    from agentfast.data import TextEncoder
    from tests.training_fixtures import save_tiny_encoder

    model_dir = save_tiny_encoder(tmp_path / "encoder")
    texts = ["run the tests", "open the file"]
    first, first_cached, cold = _embed_lazily(model_dir, tmp_path / "cache", texts)
    assert first.loaded and first_cached.misses == 2
    eager = TextEncoder(str(model_dir))
    torch.testing.assert_close(cold, eager.encode(texts, progress=False))

    second, second_cached, warm = _embed_lazily(model_dir, tmp_path / "cache", texts[::-1])
    assert not second.loaded and second_cached.hits == 2  # named from the cache's record
    assert (second_cached.identity, second_cached.dim) == (eager.identity, eager.dim)
    assert torch.equal(warm, cold.flip(0))

    third, third_cached, _ = _embed_lazily(model_dir, tmp_path / "cache", ["a new text"])
    assert third.loaded and (third_cached.hits, third_cached.misses) == (0, 1)


def test_rewriting_an_encoder_file_makes_the_cache_load_it_again(tmp_path):
    import os

    from tests.training_fixtures import save_tiny_encoder

    model_dir = save_tiny_encoder(tmp_path / "encoder")
    _embed_lazily(model_dir, tmp_path / "cache", ["run the tests"])
    config = model_dir / "config.json"
    stat = config.stat()
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    encoder, cached, _ = _embed_lazily(model_dir, tmp_path / "cache", ["run the tests"])
    assert cached.identity and encoder.loaded  # the signature changed, so it loaded to name it
    assert cached.hits == 1  # same weights, same identity: the embeddings are still found


def test_a_damaged_encoder_record_is_ignored_with_a_warning(tmp_path):
    from tests.training_fixtures import save_tiny_encoder

    model_dir = save_tiny_encoder(tmp_path / "encoder")
    _, _, cold = _embed_lazily(model_dir, tmp_path / "cache", ["run the tests"])
    [record] = (tmp_path / "cache" / "encoders").glob("*.json")
    record.write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable encoder record"):
        encoder, cached, warm = _embed_lazily(model_dir, tmp_path / "cache", ["run the tests"])
    assert encoder.loaded and torch.equal(warm, cold)


def test_a_fully_cached_run_does_not_import_transformers(tmp_path):
    from tests.training_fixtures import save_tiny_encoder

    model_dir = save_tiny_encoder(tmp_path / "encoder")
    _embed_lazily(model_dir, tmp_path / "cache", ["run the tests"])
    script = textwrap.dedent(f"""
        import sys
        from agentfast.data import CachedEncoder, TextEncoder
        cached = CachedEncoder(TextEncoder({str(model_dir)!r}, lazy=True), {str(tmp_path / "cache")!r})
        assert cached.encode(["run the tests"], progress=False).shape == (1, cached.dim)
        assert cached.hits == 1 and "transformers" not in sys.modules, sorted(sys.modules)[:5]
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=REPO)
