"""Where librdkafka's own log goes: the Python logger ``lifecycle.kafka.client``, never stderr directly.

Every client of this package (consumer, producer, admin) passes :data:`KAFKA_CLIENT_LOG` as
librdkafka's ``logger`` option, so connection attempts and broker errors are log records at their
syslog level mapped to Python's, shown or filtered by the application's logging like any other.
"""

from __future__ import annotations

import logging

#: librdkafka's log, as Python log records (the ``logger`` client option).
KAFKA_CLIENT_LOG = logging.getLogger("lifecycle.kafka.client")
