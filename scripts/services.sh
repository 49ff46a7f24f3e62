# Functions that bring up the services the tests and examples need.
# Sourced by scripts/test.sh and scripts/bench.sh. Each fails loudly.

die() { echo "error: $*" >&2; exit 1; }

wait_for() { # wait_for SECONDS CMD...
  local t=$1; shift
  for _ in $(seq 1 "$t"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
  return 1
}

ensure_postgres() {
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    echo "PostgreSQL is down; starting it"
    command -v pg_ctlcluster >/dev/null || die "PostgreSQL is not running and pg_ctlcluster is not installed"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
    wait_for 30 pg_isready -h 127.0.0.1 -p 5432 -q || die "PostgreSQL did not come up on 127.0.0.1:5432"
  fi
  psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'sqlx_envelope_test'" | grep -q 1 \
    || psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE sqlx_envelope_test" \
    || die "cannot create PostgreSQL database sqlx_envelope_test"
  psql -h 127.0.0.1 -U postgres -d sqlx_envelope_test -qc "CREATE EXTENSION IF NOT EXISTS pgcrypto" >/dev/null 2>&1 || true
}

mysql_tcp() { mysql --protocol=TCP -h 127.0.0.1 -P 3306 "$@"; }

ensure_mariadb() {
  if ! mysqladmin --protocol=TCP -h 127.0.0.1 -P 3306 -u root ping >/dev/null 2>&1 \
     && ! mysqladmin ping >/dev/null 2>&1; then
    echo "MariaDB is down; starting it"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    wait_for 60 mysqladmin ping || die "MariaDB did not come up"
  fi
  # root over TCP may be refused on a stock install (unix_socket auth): fall back
  # to a passwordless TCP user created through the socket.
  if mysql_tcp -u root -e 'SELECT 1' >/dev/null 2>&1; then
    MYSQL_TEST_USER=root
  else
    mysql -e "CREATE USER IF NOT EXISTS 'envelope'@'127.0.0.1' IDENTIFIED BY ''; GRANT ALL ON *.* TO 'envelope'@'127.0.0.1'; FLUSH PRIVILEGES;" \
      || die "cannot log in to MariaDB as root over TCP nor create a test user"
    MYSQL_TEST_USER=envelope
  fi
  mysql_tcp -u "$MYSQL_TEST_USER" -e "CREATE DATABASE IF NOT EXISTS sqlx_envelope_test" \
    || die "cannot create MariaDB database sqlx_envelope_test"
  export MYSQL_TEST_USER
}

# moto (local KMS endpoint) in a virtualenv under target/.
ensure_moto() {
  local venv="${SQLX_ENVELOPE_MOTO_VENV:-$PWD/target/moto-venv}"
  if [ ! -x "$venv/bin/moto_server" ]; then
    echo "installing moto into $venv"
    python3 -m venv "$venv" || die "python3 -m venv failed"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto==5.2.5' flask flask-cors \
      || die "pip install moto failed"
  fi
  export SQLX_ENVELOPE_MOTO_SERVER="$venv/bin/moto_server"
}

# Drop the per-test namespaces (`t_<32 hex>` schemas on PostgreSQL, databases on
# MariaDB) that earlier runs of the suite left behind (tests/support/mod.rs).
drop_test_namespaces() {
  local s
  for s in $(psql -h 127.0.0.1 -U postgres -d sqlx_envelope_test -tAc \
      "SELECT nspname FROM pg_namespace WHERE nspname ~ '^t_[0-9a-f]{32}$'"); do
    psql -h 127.0.0.1 -U postgres -d sqlx_envelope_test -qc "DROP SCHEMA $s CASCADE" >/dev/null 2>&1 || true
  done
  for s in $(mysql_tcp -u "$MYSQL_TEST_USER" -N -e \
      "SELECT schema_name FROM information_schema.schemata WHERE schema_name REGEXP '^t_[0-9a-f]{32}$'"); do
    mysql_tcp -u "$MYSQL_TEST_USER" -e "DROP DATABASE $s" || true
  done
}
