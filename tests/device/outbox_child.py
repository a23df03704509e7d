"""Child process for the kill -9 test: queues numbered feature blocks in the outbox and publishes them.

Each block's seq is committed in the same transaction as the block (state key ``next_seq``), so a
restarted child continues exactly after the last committed block. Prints ``DONE`` when every block up
to ``--total`` is queued and acknowledged.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import numpy as np

from broker import wire
from device.link import Link
from device.outbox import Outbox, OutMsg
from firmware_bridge.block import SampleBlock

STREAM = "therapist/eda"
SESSION = "s-kill"


def block_for(seq: int) -> SampleBlock:
    values = (np.arange(8, dtype=np.float32) + seq * 8) / 100.0
    return SampleBlock(STREAM, seq, 1_700_000_000_000_000_000 + seq * 2_000_000_000, 4.0, values)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--total", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    box = Outbox(args.db, synchronous="normal")
    link = Link(box, host=args.host, port=args.port, client_id=f"dyadsync-unit-{args.room}-{args.user}",
                username=args.user, password=args.password, max_inflight=rng.choice([1, 5, 20]),
                reconnect_min_s=0.05, reconnect_max_s=0.5).start()
    topic = wire.feat_topic(args.room, args.user, STREAM)
    seq = int(box.get_state("next_seq", 0))
    print(f"START {seq}", flush=True)
    while seq < args.total:
        n = min(rng.randint(1, 5), args.total - seq)
        msgs = [OutMsg(topic, wire.encode_block(block_for(s), SESSION), "feat") for s in range(seq, seq + n)]
        box.put(msgs, state={"next_seq": seq + n})
        seq += n
        time.sleep(rng.random() * 0.01)
    ok = link.flush(60)
    link.stop()
    box.close()
    print("DONE" if ok else "NOT-FLUSHED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
