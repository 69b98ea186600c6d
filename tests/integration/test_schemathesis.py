"""schemathesis against /openapi.json of a live server over real chains.

Every response must conform to the document and no request may produce a
5xx.  ``positive_data_acceptance`` is excluded: the document types IDs as
strings (the proto carries no pattern), so schemathesis considers "0" a valid
wallet ID, while the service rightly answers 400 for it.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from service import children
from service.api.services import API_SERVICES
from service.gateway.limits import RestLimits
from service.gateway.serve import RunningGateway, start_gateway
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture(loop_scope="session")
async def live_gateway(stack: Stack) -> AsyncIterator[RunningGateway]:
    gateway = await start_gateway(stack.target, "127.0.0.1:0", API_SERVICES, RestLimits())
    yield gateway
    await gateway.aclose()


async def test_schemathesis_finds_no_server_errors_or_nonconforming_responses(
    live_gateway: RunningGateway, stack: Stack, tmp_path: Path
) -> None:
    st = Path(sys.executable).parent / "st"
    process = await children.create_subprocess_exec(
        str(st),
        "run",
        f"http://127.0.0.1:{live_gateway.port}/openapi.json",
        "--header", f"X-API-Key: {stack.api_key}",
        "--checks", "all",
        "--exclude-checks", "positive_data_acceptance",
        "--max-examples", "60",
        "--seed", "20261128",
        "--generation-database", "none",
        "--no-color",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    generated = re.search(r"(\d+) generated", text)
    assert generated is not None and int(generated.group(1)) > 50, text
    print(text[text.find("Test Phases") :], file=sys.stderr)
