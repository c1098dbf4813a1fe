"""The Python bindings of roam-ffi against a real server: send, receive, read, resume from a
saved cursor (SYNC) with a listener, pull a conversation's history, a refused send.

Run by tests/tests/ffi.rs after it generated the bindings (`roam.py` beside
`libroam_ffi.so`) into a directory on PYTHONPATH:
    python3 test_roam.py EDGE[,EDGE..] CA_FILE ALICE_TOKEN BOB_TOKEN
"""

import queue
import sys
import time

import roam

edges = sys.argv[1].split(",")
ca_file, alice_token, bob_token = sys.argv[2], sys.argv[3], sys.argv[4]


def options(device, cursor=0):
    o = roam.default_options(device)
    o.platform = "python"
    o.ca_file = ca_file
    o.cursor = cursor
    o.backoff_base_ms = 50
    o.backoff_max_ms = 500
    o.send_wait_ms = 20_000
    return o


def wait_for(client, what, pred, timeout=20.0):
    """Pulls events until one satisfies pred; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        event = client.next_event(200)
        if event is None:
            continue
        seen.append(event)
        if pred(event):
            return event
    raise AssertionError(f"no {what} within {timeout} s; saw {seen}")


def is_message(event):
    return isinstance(event, roam.ClientEvent.MESSAGE)


alice = roam.RoamClient.connect(edges, alice_token, options("alice-py"))
bob = roam.RoamClient.connect(edges, bob_token, options("bob-py"))
connected = wait_for(alice, "Connected", lambda e: isinstance(e, roam.ClientEvent.CONNECTED))
assert connected.user_id == "alice", connected

# Send → ack; receive.
ack = bob.send_text("alice", "hello from python")
assert ack.id > 0 and ack.seq > 0 and not ack.duplicate, ack
got = wait_for(alice, "bob's message", is_message).message
assert got.sender == "bob", got
assert bytes(got.content) == b"hello from python", got
assert got.seq == 1 and got.id == ack.id, (got, ack)

# Read receipt.
alice.read("bob", got.conversation_seq)
reply = wait_for(alice, "ReadReply", lambda e: isinstance(e, roam.ClientEvent.READ_REPLY))
assert reply.peer == "bob" and reply.unread == 0, reply

# A refusal is an exception carrying the server's code.
try:
    bob.send_text("", "to nobody")
    raise AssertionError("a send to an empty id was accepted")
except roam.RoamError.Refused as e:
    assert "INVALID_ARGUMENT" in e.code, e

# Resume: alice goes away with her cursor saved; bob writes; a new client from that cursor
# gets exactly the missed message (SYNC), pushed to a listener.
cursor = alice.cursor()
assert cursor == 1, cursor
alice.close()
bob.send_text("alice", "while you were away")

events = queue.Queue()


class Listener(roam.EventListener):
    def on_event(self, event):
        events.put(event)


alice2 = roam.RoamClient.connect(edges, alice_token, options("alice-py", cursor))
alice2.set_listener(Listener())
try:
    alice2.next_event(0)
    raise AssertionError("next_event pulled while a listener is set")
except roam.RoamError.ListenerSet:
    pass
deadline = time.monotonic() + 20
resumed = []
while not resumed:
    event = events.get(timeout=max(0.1, deadline - time.monotonic()))
    if is_message(event):
        resumed.append(bytes(event.message.content))
assert resumed == [b"while you were away"], resumed
assert alice2.cursor() == 2, alice2.cursor()
alice2.close()

# History: a fresh client pulls the whole conversation with bob.
alice3 = roam.RoamClient.connect(edges, alice_token, options("alice-py", 2))
wait_for(alice3, "Connected", lambda e: isinstance(e, roam.ClientEvent.CONNECTED))
alice3.sync("bob", 0)
history = [
    bytes(wait_for(alice3, "history", is_message).message.content) for _ in range(2)
]
assert history == [b"hello from python", b"while you were away"], history
alice3.close()
bob.close()
print("ok")
