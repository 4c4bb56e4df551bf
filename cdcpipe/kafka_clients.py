"""Every Kafka client of a process is made here, so a SASL login replaced in Vault reaches all of them.

:func:`producer`, :func:`consumer` and :func:`admin` build confluent-kafka clients from a configuration (usually
``KafkaSettings.client_config()``), with the process's current SASL login in place of the configured one once
:func:`rotate` has been called, and remember them (weakly).  :func:`rotate` hands the new login to every live
client (``set_sasl_credentials``: used the next time it authenticates — a new broker connection; connections
already authenticated stay as they are) and to every client made after it.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import confluent_kafka
import structlog
from confluent_kafka.admin import AdminClient

log = structlog.get_logger(__name__)


class Producer(confluent_kafka.Producer):  # a subclass: weak-referenceable
    pass


class Consumer(confluent_kafka.Consumer):
    pass


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_lock = threading.Lock()
_login: tuple[str, str] | None = None


def _conf(conf: dict[str, Any]) -> dict[str, Any]:
    login = _login
    if login is None or "sasl.username" not in conf:
        return conf
    return {**conf, "sasl.username": login[0], "sasl.password": login[1]}


def _track(client: Any) -> Any:
    with _lock:
        _live.add(client)
    return client


def producer(conf: dict[str, Any]) -> Producer:
    return _track(Producer(_conf(conf)))  # type: ignore[no-any-return]


def consumer(conf: dict[str, Any]) -> Consumer:
    return _track(Consumer(_conf(conf)))  # type: ignore[no-any-return]


def admin(conf: dict[str, Any]) -> AdminClient:
    return _track(AdminClient(_conf(conf)))  # type: ignore[no-any-return]


def rotate(username: str, password: str) -> int:
    """Use this SASL login from now on, in every live client and every new one; how many clients took it."""
    global _login
    with _lock:
        _login = (username, password)
        clients = list(_live)
    done = 0
    for client in clients:
        try:
            client.set_sasl_credentials(username, password)
            done += 1
        except (RuntimeError, confluent_kafka.KafkaException):  # a closed consumer: gone soon
            continue
    log.info("Kafka SASL login replaced in the live clients", clients=done)
    return done
