"""``PolicyObjectReader`` on a real ``nats-server -js``: objects of the policy store read chunk by chunk
through the stream's message-get API (no consumer, so no consumer placed on a dead cluster node) come
back byte for byte, whatever their size; a missing object, a tampered chunk and an object over the size
limit are refused like ``ObjectStore.get`` refuses them."""

from __future__ import annotations

import nats
import pytest
from nats.js.api import ObjectStoreConfig
from nats.js.errors import DigestMismatchError, NotFoundError

from barp_sidecar.policy.nats_policies import PolicyObjectReader

CHUNK_BYTES = 128 * 1024  # nats-py's object chunk size


@pytest.fixture
async def store(broker):
    client = await nats.connect(broker.url)
    js = client.jetstream(timeout=5)
    objects = await js.create_object_store("P", config=ObjectStoreConfig(bucket="P"))
    yield js, objects, PolicyObjectReader(js, objects, "P")
    await client.close()


@pytest.mark.parametrize("size", [0, 1, CHUNK_BYTES, 3 * CHUNK_BYTES + 17])
async def test_objects_come_back_byte_for_byte(store, size):
    _, objects, reader = store
    data = bytes(i * 7 % 251 for i in range(size))
    await objects.put("v1/policy.safetensors", b"an older object under another name")
    await objects.put("v2/policy.safetensors", data)
    await objects.put("v2/policy.safetensors", data)  # written twice: the latest chunks count
    assert await reader.read("v2/policy.safetensors") == data


async def test_a_missing_object_is_not_found(store):
    _, _, reader = store
    with pytest.raises(NotFoundError):
        await reader.read("v9/manifest.json")


async def test_a_tampered_chunk_fails_the_digest(store):
    js, objects, reader = store
    info = await objects.put("v1/manifest.json", b'{"version": 1}')
    chunk = await js.get_msg("OBJ_P", seq=1, subject=f"$O.P.C.{info.nuid}", next=True)
    await js.delete_msg("OBJ_P", chunk.seq)
    await js.publish(f"$O.P.C.{info.nuid}", b'{"version": 2}')
    with pytest.raises(DigestMismatchError):
        await reader.read("v1/manifest.json")


async def test_an_object_over_the_limit_is_refused_before_reading_it(store):
    _, objects, reader = store
    await objects.put("v1/policy.safetensors", b"x" * 1000)
    with pytest.raises(ValueError, match="1000 bytes, more than 999"):
        await reader.read("v1/policy.safetensors", max_bytes=999)
