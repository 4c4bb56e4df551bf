"""The Kafka ACLs each cdcpipe process needs (docs/security.md, "Least privilege"), granted to a SCRAM user through
the stack's plaintext listener (a super user there)."""

from __future__ import annotations

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

Op = AclOperation
PREFIXED, LITERAL = ResourcePatternType.PREFIXED, ResourcePatternType.LITERAL


def capture_acls(prefix: str) -> list[tuple[ResourceType, str, ResourcePatternType, AclOperation]]:
    return [
        *((ResourceType.TOPIC, f"{prefix}.", PREFIXED, op) for op in (Op.WRITE, Op.READ, Op.DESCRIBE, Op.CREATE)),
        *((ResourceType.TRANSACTIONAL_ID, f"cdcpipe-capture.{prefix}.", PREFIXED, op) for op in (Op.WRITE,
                                                                                               Op.DESCRIBE)),
        (ResourceType.BROKER, "kafka-cluster", LITERAL, Op.IDEMPOTENT_WRITE),
        (ResourceType.GROUP, "cdcpipe-read-", PREFIXED, Op.READ),  # reads its position back (no offsets kept)
    ]


def apply_acls(prefix: str, group: str) -> list[tuple[ResourceType, str, ResourcePatternType, AclOperation]]:
    return [
        *((ResourceType.TOPIC, f"{prefix}.", PREFIXED, op) for op in (Op.READ, Op.DESCRIBE)),
        *((ResourceType.TOPIC, f"{prefix}.dlq", LITERAL, op) for op in (Op.WRITE, Op.CREATE)),
        *((ResourceType.GROUP, group, PREFIXED, op) for op in (Op.READ, Op.DESCRIBE)),
        (ResourceType.GROUP, "cdcpipe-schemas-", PREFIXED, Op.READ),
        (ResourceType.BROKER, "kafka-cluster", LITERAL, Op.IDEMPOTENT_WRITE),
    ]


def grant(bootstrap: str, user: str, acls: list[tuple[ResourceType, str, ResourcePatternType, AclOperation]]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    bindings = [AclBinding(kind, name, pattern, f"User:{user}", "*", op, AclPermissionType.ALLOW)
                for kind, name, pattern, op in acls]
    for f in admin.create_acls(bindings).values():
        f.result(30)
