"""``balance.updated`` webhooks: per-tenant config, a durable outbox, signed delivery.

payload.py    what an event says (its type, id and exact JSON body)
signing.py    Standard Webhooks secrets and signatures
urls.py       a receiver URL's syntax
destinations.py  where webhooks may go: public hosts, vetted at config and every send
manage.py     the use cases: get/update a tenant's config, replay events
emitter.py    block changes -> outbox events (a ChangeListener and WatchedSource)
delivery.py   the worker sending outbox events, retrying, in order per wallet
http_sender.py  the aiohttp adapters: POSTs one webhook (a ``WebhookSender``) through a
              connector that vets each address it connects to; the system resolver
wiring.py     ``build_webhooks``: the parts above from a policy, a store and a sender

The gRPC servicer is ``service.api.webhooks_servicer``.
"""
