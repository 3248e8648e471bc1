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
