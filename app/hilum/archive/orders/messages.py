"""The HL7 message log: each (sender, control ID) is applied once and answered with the same ACK.

HL7 v2.5 2.10.1 (original acknowledgement mode): a sender that did not get
an ACK sends the message again with the same Message Control ID (MSH-10).
``hl7_messages`` keeps the control IDs applied, with the ACK each got, in
the same transaction as the changes the message made; a repeat is answered
with that ACK and not applied twice (:meth:`OrderBook.apply_message`).
"""

from __future__ import annotations

from sqlalchemy import bindparam, insert, select

from hilum.archive.orders.model import Tx, now
from hilum.archive.schema import hl7_messages

_SEEN = select(hl7_messages.c.ack).where(hl7_messages.c.sender == bindparam("sender"),
                                         hl7_messages.c.control_id == bindparam("control_id"))


def seen(tx: Tx, sender: str, control_id: str) -> str | None:
    """The ACK sent for a message already applied, or None."""
    return tx.conn.execute(_SEEN, {"sender": sender[:255], "control_id": control_id[:199]}).scalar()


def record(tx: Tx, sender: str, control_id: str, message_type: str, ack: str) -> None:
    """Remember a message as applied, with its ACK (a repeat raises IntegrityError at commit)."""
    tx.conn.execute(insert(hl7_messages), {"sender": sender[:255], "control_id": control_id[:199],
                                           "message_type": message_type[:16], "ack": ack, "received_at": now()})
