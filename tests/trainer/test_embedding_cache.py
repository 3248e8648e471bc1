import numpy as np
import pytest

from barp_sidecar.policy.encoder import EncoderSettings, HashingEncoder
from trainer.offline.embedding_cache import EmbeddingCache


class CountingEncoder(HashingEncoder):
    def __init__(self, settings):
        super().__init__(settings)
        self.encoded = 0

    def encode(self, texts, batch_size=64):
        self.encoded += len(texts)
        return super().encode(texts, batch_size)


def test_second_run_reads_from_disk_and_matches(tmp_path):
    texts = [f"prompt number {i}" for i in range(10)] + ["prompt number 3"]
    first = CountingEncoder(EncoderSettings(model="hash:32"))
    vectors = EmbeddingCache(tmp_path, first).embed(texts, chunk_size=4)
    assert first.encoded == 10  # the duplicate is encoded once
    second = CountingEncoder(EncoderSettings(model="hash:32"))
    cache = EmbeddingCache(tmp_path, second)
    assert len(cache) == 10 and cache.count_missing(texts) == 0
    again = cache.embed(list(reversed(texts)))
    assert second.encoded == 0
    assert np.array_equal(again, vectors[::-1])
    assert np.array_equal(vectors, second.encode(texts))


def test_truncation_and_length_are_part_of_the_key(tmp_path):
    texts = ["a b c d e f g h i j k l m n o p q r s t u v w x y z"]
    tail = EmbeddingCache(tmp_path, HashingEncoder(EncoderSettings(model="hash:32", max_seq_length=10)))
    head = EmbeddingCache(
        tmp_path, HashingEncoder(EncoderSettings(model="hash:32", max_seq_length=10, truncation="head"))
    )
    assert tail.directory != head.directory
    assert not np.array_equal(tail.embed(texts), head.embed(texts))
    assert len(list(tmp_path.iterdir())) == 2


def test_damaged_shard_costs_only_re_encoding(tmp_path):
    encoder = CountingEncoder(EncoderSettings(model="hash:8"))
    cache = EmbeddingCache(tmp_path, encoder)
    cache.embed(["x", "y"])
    for shard in cache.directory.glob("shard-*.npz"):
        shard.write_bytes(b"garbage")
    fresh = CountingEncoder(EncoderSettings(model="hash:8"))
    assert EmbeddingCache(tmp_path, fresh).embed(["x", "y"]).shape == (2, 8)
    assert fresh.encoded == 2


class DirectoryModelEncoder(HashingEncoder):
    """A hashing encoder that says it was loaded from a model directory, as ``--encoder-model PATH`` is."""

    def __init__(self, model_dir):
        super().__init__(EncoderSettings(model="hash:16"))
        self._directory_settings = EncoderSettings(model=str(model_dir))

    @property
    def settings(self):
        return self._directory_settings

    @property
    def encoder_id(self):
        return self._directory_settings.model


def test_a_model_directory_is_keyed_by_its_files_not_its_path(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "1_Pooling").mkdir(parents=True)
    (model_dir / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (model_dir / "model.safetensors").write_bytes(b"weights of model A")
    root = tmp_path / "cache"
    first = EmbeddingCache(root, DirectoryModelEncoder(model_dir))
    first.embed(["a prompt"])
    assert len(first.config["model_files_sha256"]) == 64

    (model_dir / "model.safetensors").write_bytes(b"weights of model B")  # another model, same path
    other = EmbeddingCache(root, DirectoryModelEncoder(model_dir))
    assert other.directory != first.directory
    assert other.count_missing(["a prompt"]) == 1  # B never reads A's vectors

    (model_dir / "model.safetensors").write_bytes(b"weights of model A")
    assert EmbeddingCache(root, DirectoryModelEncoder(model_dir)).directory == first.directory
    (model_dir / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert EmbeddingCache(root, DirectoryModelEncoder(model_dir)).directory != first.directory


def test_an_encoder_not_loaded_from_a_directory_keeps_its_key(tmp_path):
    cache = EmbeddingCache(tmp_path, HashingEncoder(EncoderSettings(model="hash:32")))
    assert cache.config == {"encoder_id": "hash:32", "dim": 32, "max_seq_length": 256, "truncation": "tail"}


def test_every_prompt_cached_never_loads_the_encoder(tmp_path, monkeypatch):
    from trainer.offline import features

    settings = EncoderSettings(model="hash:32")
    prompts = [f"cached prompt {i}" for i in range(5)]
    assert EmbeddingCache.for_unloaded(tmp_path, HashingEncoder(settings)) is None  # nothing cached yet
    first, encoder_id, dim = features.embed_prompts(prompts, settings, tmp_path, show_progress=False)

    class UnloadableEncoder(HashingEncoder):
        def load(self):
            raise AssertionError("the encoder was loaded")

        def encode(self, texts, batch_size=64):
            raise AssertionError("the encoder was asked to encode")

    monkeypatch.setattr(features, "build_encoder", UnloadableEncoder)
    again = features.embed_prompts(list(reversed(prompts)), settings, tmp_path, show_progress=False)
    assert np.array_equal(again[0], first[::-1]) and again[1:] == (encoder_id, dim) == ("hash:32", 32)
    with pytest.raises(AssertionError, match="was loaded"):  # one prompt missing: the encoder is needed
        features.embed_prompts([*prompts, "a new prompt"], settings, tmp_path, show_progress=False)


def test_a_cached_model_directory_is_never_loaded(tmp_path):
    """The directory holds no loadable model at all: only the cache can answer."""
    from trainer.offline.features import embed_prompts

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"not a model")
    root = tmp_path / "cache"
    vectors = EmbeddingCache(root, DirectoryModelEncoder(model_dir)).embed(["x", "y"])
    again, encoder_id, dim = embed_prompts(["y", "x"], EncoderSettings(model=str(model_dir)), root, False)
    assert np.array_equal(again, vectors[::-1]) and (encoder_id, dim) == (str(model_dir), 16)


def test_a_model_directory_is_hashed_once_per_process_while_its_files_are_unchanged(tmp_path, monkeypatch):
    from trainer.offline import embedding_cache

    hashed = []
    real_file_sha256 = embedding_cache.file_sha256
    monkeypatch.setattr(
        embedding_cache, "file_sha256", lambda path: hashed.append(path) or real_file_sha256(path)
    )
    monkeypatch.setattr(embedding_cache, "RACY_WINDOW_NS", 0)  # the files were written just now
    model_dir = tmp_path / "model"
    (model_dir / "1_Pooling").mkdir(parents=True)
    (model_dir / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (model_dir / "model.safetensors").write_bytes(b"weights of model A")
    directories = {
        EmbeddingCache(tmp_path / "cache", DirectoryModelEncoder(model_dir)).directory for _ in range(3)
    }
    assert len(directories) == 1 and len(hashed) == 2  # two files, hashed on the first open only

    (model_dir / "model.safetensors").write_bytes(b"weights of a larger model B")
    changed = EmbeddingCache(tmp_path / "cache", DirectoryModelEncoder(model_dir)).directory
    assert changed not in directories and len(hashed) == 4


def test_files_changed_just_before_hashing_are_rehashed_on_every_open(tmp_path, monkeypatch):
    from trainer.offline import embedding_cache

    hashed = []
    real_file_sha256 = embedding_cache.file_sha256
    monkeypatch.setattr(
        embedding_cache, "file_sha256", lambda path: hashed.append(path) or real_file_sha256(path)
    )
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights of model A")  # within the racy window
    for _ in range(2):
        EmbeddingCache(tmp_path / "cache", DirectoryModelEncoder(model_dir))
    assert len(hashed) == 2
