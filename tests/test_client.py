"""The HTTP client of our own API: what it sends, and failures as values, not exceptions."""

from __future__ import annotations

import socket
from pathlib import Path

from retailrec.client import ApiClient, api_base
from retailrec.config import Settings


def test_api_base_takes_a_url_or_host_and_port() -> None:
    assert api_base("retailrec-api:8000") == "http://retailrec-api:8000"
    assert api_base("https://shop.example/api/") == "https://shop.example/api"


def test_no_url_or_no_key_asks_nothing(tmp_path: Path) -> None:
    assert ApiClient.from_settings(Settings(data_dir=tmp_path, api_url=None)) is None
    with ApiClient("127.0.0.1:9") as client:
        answer = client.reload()  # no key: the API would refuse, so nothing is sent
    assert not answer.asked and "RETAILREC_API_KEY is not set" in str(answer.reason)
    assert answer.to_dict() == {"asked": False, "reason": answer.reason}


def test_an_unreachable_api_is_an_answer_without_a_status() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with ApiClient(f"127.0.0.1:{port}", api_key="k", timeout=2) as client:
        answer = client.retrain(("popular",))
    assert answer.asked and answer.status is None and not answer.ok
    assert f"127.0.0.1:{port}/v1/admin/retrain" in str(answer.error)
    assert answer.to_dict() == {"asked": True, "status": None, "error": answer.error}
