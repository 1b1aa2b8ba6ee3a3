"""Starts moto's server (the local SQS and Step Functions) with its SQS's per-message costs
made constant.

moto 5.2's SQS reads the clock through datetime arithmetic for every message it looks at, and
computes all of a queue's attributes (three walks of the whole queue) on every SendMessage and
on every message a ReceiveMessage returns (its retention check). With thousands of messages in a
queue (each job's delayed timeout check stays there for the maximum age) a call costs tens of
milliseconds and the server, one Python process, stops keeping up. The replacements below answer
the same values:

- the clock: `time.time()` (what moto's datetime arithmetic computes, without it);
- the retention check: the queue's `MessageRetentionPeriod` read alone;
- the approximate counts (`ApproximateNumberOf*`): one walk for the three, kept for the
  millisecond it was taken in (SQS documents them as approximate);
- DeleteMessage: one walk of the queue instead of two, and the message removed from the list in
  place. moto rebuilds the list without the message and assigns it, so a message another of its
  threads (the server is threaded) appended meanwhile was lost. (Not under the queue's lock:
  long polls hold it while they walk the queue.)
- no access log line per request (the stack discards moto's output anyway).

Run as `python -c <this file> -H 127.0.0.1 -p PORT`; the arguments are moto_server's.
"""

import logging
import sys
import time

import moto.sqs.models as sqs
from moto.server import main


def unix_time(dt=None):
    return time.time() if dt is None else ORIGINAL_UNIX_TIME(dt)


def unix_time_millis(dt=None):
    return time.time() * 1000.0 if dt is None else ORIGINAL_UNIX_TIME_MILLIS(dt)


def is_message_valid_based_on_retention_period(self, queue_name, message):
    retention = int(self.get_queue(queue_name).message_retention_period)
    return retention + message.sent_timestamp / 1000 > time.time()


def counts(queue):
    """(delayed, not visible, visible and not delayed) messages of `queue`, as of this ms."""
    now = time.time() * 1000.0
    key = (id(queue._messages), len(queue._messages), int(now))
    cached = getattr(queue, "_local_counts", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    delayed = not_visible = available = 0
    for message in queue._messages:
        is_delayed = now < message.delayed_until
        is_visible = now > message.visible_at
        delayed += is_delayed
        not_visible += not is_visible
        available += is_visible and not is_delayed
    result = (delayed, not_visible, available)
    queue._local_counts = (key, result)
    return result


def delete_message(self, receipt_handle):
    if receipt_handle in self.deleted_messages:
        return
    # A copy, then one `remove`: each a single list operation, whole under the interpreter lock,
    # as SendMessage's `append` is.
    for message in list(self._messages):
        if message.had_receipt_handle(receipt_handle):
            self.pending_messages.discard(message)
            self.deleted_messages.update(message.all_receipt_handles)
            try:
                self._messages.remove(message)
            except ValueError:
                pass  # deleted meanwhile through another of its receipt handles
            return
    raise sqs.ReceiptHandleIsInvalid()


ORIGINAL_UNIX_TIME = sqs.unix_time
ORIGINAL_UNIX_TIME_MILLIS = sqs.unix_time_millis
sqs.unix_time = unix_time
sqs.unix_time_millis = unix_time_millis
sqs.SQSBackend.is_message_valid_based_on_retention_period = (
    is_message_valid_based_on_retention_period
)
sqs.Queue.approximate_number_of_messages_delayed = property(lambda q: counts(q)[0])
sqs.Queue.approximate_number_of_messages_not_visible = property(lambda q: counts(q)[1])
sqs.Queue.approximate_number_of_messages = property(lambda q: counts(q)[2])
sqs.Queue.delete_message = delete_message

logging.getLogger("werkzeug").setLevel(logging.WARNING)
sys.argv[0] = "moto_server"
sys.exit(main())
