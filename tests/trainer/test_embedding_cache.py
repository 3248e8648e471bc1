import numpy as np

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
