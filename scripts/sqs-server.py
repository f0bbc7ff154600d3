"""moto's server with its requests taken one at a time (run by scripts/sqs.sh; arguments as
moto_server's).

moto's SQS model is not thread-safe, and its server answers each request on its own thread.
Under concurrent receives, deletes and sends it loses messages and deletes: a delete rebuilds
the queue's list and puts it back, dropping a message appended or a delete made meanwhile;
two receives hand out one message twice; a receive that iterates the in-flight set while
another changes it fails with a 500 after it has hidden messages for their visibility
timeout. Real SQS does none of this, so the test endpoint must not either.

Here each request holds one lock, and a long poll gives it up while it waits for messages:
requests are answered one at a time, and a receive that waits does not hold back the others.
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main
from moto.sqs.models import Queue

# One request at a time; the condition wakes long polls when a request may have changed a queue.
served = threading.Condition(threading.RLock())

answer = DomainDispatcherApplication.__call__


def one_at_a_time(self, environ, start_response):
    with served:
        try:
            return answer(self, environ, start_response)
        finally:
            served.notify_all()


def wait_for_messages(self, timeout):
    # Called by a receive, inside its request: gives the lock up while it waits.
    served.wait_for(lambda: self.messages, timeout=timeout)


DomainDispatcherApplication.__call__ = one_at_a_time
Queue.wait_for_messages = wait_for_messages

if __name__ == "__main__":
    main(sys.argv[1:])
