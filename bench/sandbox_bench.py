"""Throughput of the sandbox accounting API: authenticated invoice posts per second.

Starts ``python -m worker.sandbox --port 0`` in a subprocess (faults off), reads the URL
from its one-line banner, takes a token, creates a contact and a product, then posts
simple invoices with an aiohttp client at a fixed concurrency. Prints each round and the
median of the rounds. Usage::

    .venv/bin/python bench/sandbox_bench.py [--requests 5000] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
from typing import Any

import aiohttp

from worker.sandbox import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET

_BANNER = "sandbox listening on "


def _invoice(reference: str) -> dict[str, Any]:
    line = {
        "product_id": 1,
        "description": "bench",
        "quantity": "2",
        "unit_price": "4.55",
        "discount": "0",
        "discount_type": "amount",
        "tax_percent": "15",
        "is_inclusive": False,
    }
    invoice = {
        "contact_id": 1,
        "reference": reference,
        "issue_date": "2024-01-01",
        "due_date": "2024-01-31",
        "status": "Approved",
        "inventory_id": 1,
        "line_items": [line],
    }
    return {"invoice": invoice}


async def _prepare(http: aiohttp.ClientSession, url: str) -> dict[str, str]:
    form = {
        "grant_type": "client_credentials",
        "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET,
    }
    async with http.post(f"{url}/oauth/token", data=form) as response:
        response.raise_for_status()
        headers = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
    product = {"sku": "B-1", "name": "Bench", "type": "Product", "selling_price": "4.55"}
    for path, body in (
        ("/2.0/customers", {"contact": {"name": "Bench buyer"}}),
        ("/2.0/products", {"product": product}),
    ):
        async with http.post(url + path, json=body, headers=headers) as response:
            response.raise_for_status()
    return headers


async def _round(
    http: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    requests: int,
    concurrency: int,
    refs: itertools.count[int],
) -> float:
    remaining = iter(range(requests))
    failures = 0

    async def worker() -> None:
        nonlocal failures
        for _ in remaining:
            body = _invoice(f"BENCH-{next(refs)}")
            async with http.post(f"{url}/2.0/invoices", json=body, headers=headers) as response:
                await response.read()
                failures += response.status != 201

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"{failures} requests did not answer 201")
    return requests / elapsed


async def _main(args: argparse.Namespace) -> float:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.sandbox", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode().strip()
        if not line.startswith(_BANNER):
            raise SystemExit(f"unexpected banner: {line!r}")
        url = line.removeprefix(_BANNER)
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as http:
            headers = await _prepare(http, url)
            refs = itertools.count()
            await _round(http, url, headers, requests=500, concurrency=args.concurrency, refs=refs)
            rates = []
            for n in range(args.rounds):
                rate = await _round(
                    http,
                    url,
                    headers,
                    requests=args.requests,
                    concurrency=args.concurrency,
                    refs=refs,
                )
                rates.append(rate)
                print(f"round {n + 1}: {rate:,.0f} requests/s")
        median = statistics.median(rates)
        shape = f"{args.requests} invoice posts x {args.rounds} rounds"
        print(f"median: {median:,.0f} requests/s ({shape}, concurrency {args.concurrency})")
        return median
    finally:
        proc.terminate()
        await proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
