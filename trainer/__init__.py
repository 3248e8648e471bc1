"""barp-trainer: offline and online training of BaRP routing policies, evaluation, checkpoint publishing.

May import ``barp_sidecar.policy`` (network, checkpoint, encoder, reward)
and the generated protos; nothing in ``barp_sidecar`` imports ``trainer``.
"""
