#!/bin/bash
# Run once by the ClickHouse image on an empty data volume (/docker-entrypoint-initdb.d): a read-only user for
# Grafana's ClickHouse datasource, which runs whatever SQL a dashboard holds (infra/grafana/provisioning).
# The plugin sets max_execution_time on every query: that one setting stays changeable in read-only mode.
set -euo pipefail
clickhouse client --user "$CLICKHOUSE_USER" --password "$CLICKHOUSE_PASSWORD" --multiquery <<SQL
CREATE USER IF NOT EXISTS grafana IDENTIFIED WITH sha256_password BY '${GRAFANA_CLICKHOUSE_PASSWORD}'
    SETTINGS readonly = 1, max_execution_time CHANGEABLE_IN_READONLY;
GRANT SELECT ON ${CLICKHOUSE_DB}.* TO grafana;
SQL
