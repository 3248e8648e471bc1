"""The event broker: settings of the ``events`` section and the NATS JetStream connection glue.

Owns what the sidecar and the trainer share about the broker (DESIGN §7, docs/learning.md §8): the
``events`` settings (backend, URLs, credentials, TLS, stream names), turning them into connection options
before anything binds, connecting, and declaring the stream. Knows nothing about reward events or
policies (``rewards`` publishes, ``trainer.service`` consumes). ``nats-py`` is an optional dependency
(``barp-sidecar[nats]``), imported only when the NATS backend is selected.
"""
