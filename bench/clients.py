"""The two baselines the worker is compared with, both run in the benchmark's process.

* :func:`post_ceiling`: the raw ceiling. A plain aiohttp client posts the very bodies the
  worker would send (same mapping code, same contact and product ids, same
  ``Idempotency-Key``, same JSON encoder), with one token and the worker's concurrency, to
  a fresh sandbox with the same options. No Kafka, no ledger, no retries, no logging: what
  the sandbox and one Python client can do at best on this machine.
* :func:`stripped_consumer`: the floor of this design. aiokafka, the contract check, the
  mapping and the same POST, 64 at once, and nothing else: no ledger, no log line, no
  per-key ordering, no retries, no metrics, no offset commits. What is left between it
  and the ceiling is the cost of Kafka, ``parse_event`` and ``plan_document``; what is
  left between the worker and it is the cost of exactly-once and of being observable.
* :func:`serial_consumer`: the naive design. The worker's own parts (ledger, token
  provider, API client, :class:`~worker.processor.EventProcessor`) driven one record at a
  time with a commit after each, i.e. without the pipeline's concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench.events import BenchEvent
from worker import __version__
from worker.api import AccountingApi
from worker.auth import build_auth, encode_json
from worker.events import parse_event
from worker.kafka import consumer_options
from worker.ledger import open_ledger
from worker.mapping import DocumentPlan, plan_document
from worker.processor import EventProcessor, mapping_options
from worker.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET
from worker.settings import LedgerSettings, Settings

__all__ = ["bench_settings", "post_ceiling", "serial_consumer", "stripped_consumer"]


def bench_settings(*, bootstrap: str, topic: str, api_url: str, workdir: Path) -> Settings:
    """Settings for the in-process serial baseline: the defaults plus this run's endpoints."""
    base = Settings.model_construct()
    return Settings(
        kafka=base.kafka.model_copy(
            update={"bootstrap_servers": bootstrap, "topics": [topic], "group_id": f"b-{topic}"}
        ),
        api=base.api.model_copy(update={"base_url": api_url}),
        oauth=base.oauth.model_copy(update={"token_url": f"{api_url}/oauth/token"}),
        ledger=LedgerSettings(url=f"sqlite:///{workdir / f'ledger-{topic}.db'}"),
    )


async def _token(http: aiohttp.ClientSession, url: str) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }
    async with http.post(f"{url}/oauth/token", data=form) as response:
        response.raise_for_status()
        token: str = (await response.json())["access_token"]
        return token


async def _create(
    http: aiohttp.ClientSession, url: str, path: str, body: dict[str, object]
) -> int | str:
    headers = {"Content-Type": "application/json"}
    async with http.post(url + path, data=encode_json(body), headers=headers) as response:
        if response.status != 201:
            raise RuntimeError(f"setup POST {path} answered {response.status}")
        doc = await response.json()
        value: int | str = next(iter(doc.values()))["id"]
        return value


async def _resources(
    http: aiohttp.ClientSession, url: str, plans: Sequence[DocumentPlan]
) -> tuple[dict[str, int | str], dict[str, int | str]]:
    """Create each distinct contact and product once: (contact ids, product ids)."""
    contacts: dict[str, int | str] = {}
    products: dict[str, int | str] = {}
    for plan in plans:
        assert plan.customer is not None
        identity = plan.customer.external_id
        if identity not in contacts:
            contacts[identity] = await _create(http, url, "/2.0/customers", plan.customer.payload())
        for product in plan.products:
            if product.sku not in products:
                products[product.sku] = await _create(http, url, "/2.0/products", product.payload())
    return contacts, products


async def _bodies(
    http: aiohttp.ClientSession, url: str, plans: Sequence[DocumentPlan]
) -> list[tuple[bytes, str]]:
    """Create each distinct contact and product once, then encode every invoice body."""
    contacts, products = await _resources(http, url, plans)
    out = []
    for plan in plans:
        assert plan.customer is not None
        body = plan.payload(contact_id=contacts[plan.customer.external_id], product_ids=products)
        out.append((encode_json(body), plan.idempotency_key))
    return out


def _plans(events: Sequence[BenchEvent]) -> list[DocumentPlan]:
    options = mapping_options(Settings.model_construct())
    plans = []
    for event in events:
        plan = plan_document(parse_event(event.value, key=event.key), options=options)
        assert plan is not None
        plans.append(plan)
    return plans


def _client(concurrency: int) -> aiohttp.ClientSession:
    """The session both baselines post with: the worker's headers and connection limit."""
    headers = {
        "Accept": "application/json",
        "User-Agent": f"invoice-sync/{__version__}",
    }
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    return aiohttp.ClientSession(connector=connector, headers=headers)


async def post_ceiling(url: str, events: Sequence[BenchEvent], *, concurrency: int) -> None:
    """Post the worker's invoice bodies for ``events`` as fast as one aiohttp client can.

    Bodies are mapped and encoded before the clock starts; the figure is read from the
    sandbox's creation times by the caller, like the worker's.

    Raises:
        RuntimeError: a post did not answer 201 (the ceiling would be meaningless).
    """
    plans = _plans(events)
    async with _client(concurrency) as http:
        http.headers["Authorization"] = f"Bearer {await _token(http, url)}"
        work = iter(await _bodies(http, url, plans))
        failures = 0

        async def post_all() -> None:
            nonlocal failures
            for body, key in work:
                headers = {"Content-Type": "application/json", "Idempotency-Key": key}
                async with http.post(f"{url}/2.0/invoices", data=body, headers=headers) as response:
                    await response.read()
                    failures += response.status != 201

        await asyncio.gather(*(post_all() for _ in range(concurrency)))
    if failures:
        raise RuntimeError(f"{failures} ceiling posts did not answer 201")


async def stripped_consumer(
    url: str, events: Sequence[BenchEvent], *, bootstrap: str, topic: str, concurrency: int
) -> float:
    """Consume ``topic`` (holding ``events``) with the floor of this design; CPU s per 1,000.

    Contacts and products are created before the clock starts, as the worker's caches hold
    them in steady state. Then every record is parsed, mapped, encoded and posted inside
    the measured run, ``concurrency`` at once, by one process as the worker is; the figure
    is read from the sandbox's creation times by the caller. Returns this process's CPU
    time per 1,000 invoices over the consuming part (the caller runs nothing else meanwhile).

    Raises:
        RuntimeError: a post did not answer 201.
    """
    settings = Settings.model_construct()
    options = mapping_options(settings)
    kafka = settings.kafka.model_copy(
        update={"bootstrap_servers": bootstrap, "topics": [topic], "group_id": f"floor-{topic}"}
    )
    consumer = AIOKafkaConsumer(topic, **consumer_options(kafka))
    queue: asyncio.Queue[tuple[bytes, bytes | None] | None] = asyncio.Queue(maxsize=2 * concurrency)
    failures = 0
    async with _client(concurrency) as http:
        http.headers["Authorization"] = f"Bearer {await _token(http, url)}"
        contacts, products = await _resources(http, url, _plans(events))

        async def post_all() -> None:
            nonlocal failures
            while (record := await queue.get()) is not None:
                plan = plan_document(parse_event(record[0], key=record[1]), options=options)
                assert plan is not None
                assert plan.customer is not None
                body = plan.payload(
                    contact_id=contacts[plan.customer.external_id], product_ids=products
                )
                key = plan.idempotency_key
                headers = {"Content-Type": "application/json", "Idempotency-Key": key}
                async with http.post(
                    f"{url}/2.0/invoices", data=encode_json(body), headers=headers
                ) as response:
                    orjson.loads(await response.read())
                    failures += response.status != 201

        await consumer.start()
        try:
            cpu_start = time.process_time()
            posters = [asyncio.create_task(post_all()) for _ in range(concurrency)]
            left = len(events)
            while left:
                batch = await consumer.getmany(timeout_ms=200, max_records=500)
                for records in batch.values():
                    for record in records:
                        await queue.put((record.value or b"", record.key))
                        left -= 1
            for _ in posters:
                await queue.put(None)
            await asyncio.gather(*posters)
            cpu = time.process_time() - cpu_start
        finally:
            await consumer.stop()
    if failures:
        raise RuntimeError(f"{failures} floor posts did not answer 201")
    return 1000 * cpu / len(events)


async def serial_consumer(
    settings: Settings, phases: Sequence[Sequence[BenchEvent]], *, bootstrap: str
) -> None:
    """Publish each phase, then process it one record at a time with a commit after each.

    Phases run in turn (a warm-up, then the measured events) because partitions are read
    in no fixed order: warm-up records left in a later partition would otherwise fill the
    caches in the middle of the measured ones.
    """
    topic = settings.kafka.topics[0]
    consumer = AIOKafkaConsumer(topic, **consumer_options(settings.kafka))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    await consumer.start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            ledger = await stack.enter_async_context(open_ledger(settings.ledger))
            auth = await stack.enter_async_context(build_auth(settings))
            api = await stack.enter_async_context(
                AccountingApi(settings.api, auth=auth, max_connections=1)
            )
            processor = EventProcessor(api=api, ledger=ledger, settings=settings)
            for phase in phases:
                for event in phase:
                    await producer.send(topic, event.value, key=event.key)
                await producer.flush()
                for _ in phase:
                    record = await consumer.getone()
                    await processor.handle(record)
                    tp = TopicPartition(record.topic, record.partition)
                    await consumer.commit({tp: record.offset + 1})
    finally:
        await consumer.stop()
        await producer.stop()
