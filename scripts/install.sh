#!/usr/bin/env bash
# Installs everything the native stack and the tests need, from the registries only:
# Debian packages (PostgreSQL, Redis, Prometheus, Chromium for the dashboard's browser tests), a
# Python venv (constraints.txt), llama-cpp-python (compiled once from PyPI's source, the wheel cached),
# Kafka jars, the Flink Kafka connector and Flink's Prometheus reporter (Maven Central), and the job's
# small Java serializer (compiled with javac).
# Idempotent: each step is skipped when its inputs did not change. Downloads are cached in
# $YAHOO_LLM_CACHE_DIR (default ~/.cache/yahoo-llm) so a fresh clone reinstalls from disk.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${YAHOO_LLM_STATE_DIR:-$ROOT/.state}"
CACHE="${YAHOO_LLM_CACHE_DIR:-$HOME/.cache/yahoo-llm}"
VENV="$STATE/venv"
set -a; source "$ROOT/.env"; set +a

say() { printf '[install] %s\n' "$*"; }
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root to run: $*"; exit 1
  fi
}

install_system_packages() {
  local missing=()
  compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
  command -v redis-server >/dev/null || missing+=(redis-server)
  command -v java >/dev/null || missing+=(openjdk-17-jdk-headless)
  command -v mvn >/dev/null || missing+=(maven)
  command -v cc >/dev/null || missing+=(gcc)  # builds scripts/platform/loopback_bind.c (stack.py)
  # Compile llama-cpp-python once (install_llama_cpp); its libraries need libgomp1, which g++ brings.
  command -v g++ >/dev/null || missing+=(g++)
  command -v cmake >/dev/null || missing+=(cmake)
  # Static checks of the Docker fleet (no engine needed): compose's own parser, and npm for dclint.
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v npm >/dev/null || missing+=(npm)
  # actionlint runs shellcheck over the workflows' run: blocks when it is on PATH.
  command -v shellcheck >/dev/null || missing+=(shellcheck)
  command -v wrk >/dev/null || missing+=(wrk)  # make bench drives POST /query with it (benchmarks/e2e.py)
  # Without their recommendations: Prometheus's would add node-exporter (a system service on :9100).
  local lean=()
  command -v prometheus >/dev/null && command -v promtool >/dev/null || lean+=(prometheus)
  command -v chromium >/dev/null || lean+=(chromium)  # the dashboard's tests drive it headless
  [ ${#missing[@]} -eq 0 ] && [ ${#lean[@]} -eq 0 ] && return
  say "installing Debian packages: ${missing[*]} ${lean[*]}"
  as_root apt-get update -qq
  [ ${#missing[@]} -eq 0 ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  [ ${#lean[@]} -eq 0 ] || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${lean[@]}" >/dev/null
  [[ " ${lean[*]} " == *" prometheus "* ]] && keep_system_prometheus_stopped
  return 0
}

# Debian starts the package's own Prometheus as a system service on :9090; the stack runs its own
# under supervisord (scripts/platform/observability.py), so the one just installed is stopped.
keep_system_prometheus_stopped() {
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  elif [ -x /etc/init.d/prometheus ]; then
    as_root /etc/init.d/prometheus stop >/dev/null 2>&1 || true
  fi
}

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null || continue
    if "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] <= (3, 12) else 1)'; then
      echo "$candidate"; return
    fi
  done
  say "need Python 3.11-3.12 (PyFlink ${FLINK_VERSION} supports up to 3.12); set PYTHON=/path/to/python"; exit 1
}

install_venv() {
  local want
  want="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-nodeps.txt" "$ROOT/constraints.txt" | sha256sum | cut -c1-16)"
  stamp_ok "$VENV/.installed" "$want" && return
  say "installing Python packages into $VENV (a new venv takes minutes: torch is large)"
  [ -x "$VENV/bin/python" ] || "$(find_python)" -m venv "$VENV"
  export PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
  "$VENV/bin/pip" install -q -r "$ROOT/requirements.txt" -c "$ROOT/constraints.txt"
  "$VENV/bin/pip" install -q --no-deps -r "$ROOT/requirements-nodeps.txt" -c "$ROOT/constraints.txt"
  echo "$want" > "$VENV/.installed"
}

# --- the embedded LLM's fast engine (issue 12) ---------------------------------------------------
# llama-cpp-python is a source distribution on PyPI: compiled once (about 3-4 min on 2 busy cores)
# into a wheel kept in $CACHE/wheels, which every later install (a fresh clone, CI on this machine)
# reuses in seconds. A portable x86-64 build: AVX2/FMA/F16C (no -march=native, so the cached wheel
# also suits another machine of this kind), CPU only, no BLAS, nothing fetched during the build.
# Checked by loading the model in a process of its own; when the build or the check fails, the
# stack still comes up: local_llm falls back to transformers and logs why (README, "The LLM").
LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_CUDA=OFF -DGGML_BLAS=OFF -DGGML_VULKAN=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release"

install_llama_cpp() {
  local version flavour wheels want
  version="$(grep '^llama_cpp_python==' "$ROOT/constraints.txt" | cut -d= -f3)"
  flavour="$(printf '%s' "$LLAMA_CPP_CMAKE_ARGS" | sha256sum | cut -c1-12)"
  wheels="$CACHE/wheels/llama-cpp-python-$flavour"
  want="$version-$flavour"
  stamp_ok "$VENV/.llama-cpp" "$want" && return
  export PIP_CACHE_DIR="$CACHE/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
  if ! compgen -G "$wheels/llama_cpp_python-$version-*.whl" >/dev/null; then
    # A failed build is not retried at every `make up` (minutes each): rm the stamp to try again.
    build_llama_cpp_wheel "$version" "$wheels" || { echo "$want" > "$VENV/.llama-cpp"; return 0; }
  fi
  "$VENV/bin/pip" install -q --no-deps --no-index --find-links "$wheels" "llama_cpp_python==$version"
  if ! (cd "$ROOT" && "$VENV/bin/python" -m local_llm.check); then
    say "llama.cpp does not run here: uninstalled; the embedded LLM will use transformers (slower)"
    "$VENV/bin/pip" uninstall -q -y llama_cpp_python
  fi
  echo "$want" > "$VENV/.llama-cpp"
}

build_llama_cpp_wheel() {
  local version="$1" wheels="$2" log="$STATE/llama-cpp-build.log" tmp started ticker status=0
  say "building llama-cpp-python $version from source, once: about 3-4 min on 2 cores, longer on a busy"
  say "  machine. It makes the embedded LLM several times faster; the wheel is kept in $wheels,"
  say "  so later installs take seconds. Log: $log"
  tmp="$(mktemp -d)"
  started=$SECONDS
  ( while sleep 30; do say "  still compiling llama.cpp ($((SECONDS - started)) s)"; done ) &
  ticker=$!
  CMAKE_ARGS="$LLAMA_CPP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" nice -n 10 \
    "$VENV/bin/pip" wheel --no-deps --no-binary llama_cpp_python -w "$tmp" "llama_cpp_python==$version" \
    >"$log" 2>&1 || status=$?
  kill "$ticker" 2>/dev/null; wait "$ticker" 2>/dev/null || true
  if [ "$status" != 0 ] || ! compgen -G "$tmp/llama_cpp_python-*.whl" >/dev/null; then
    say "building llama-cpp-python failed after $((SECONDS - started)) s (log: $log; README, 'The LLM',"
    say "  troubleshooting); the embedded LLM will use transformers. To retry: rm $VENV/.llama-cpp; make install"
    rm -rf "$tmp"
    return 1
  fi
  mkdir -p "$wheels"
  mv "$tmp"/llama_cpp_python-*.whl "$wheels/"
  rm -rf "$tmp"
  say "built llama-cpp-python in $((SECONDS - started)) s"
}

pyflink_home() { "$VENV/bin/python" -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))'; }

install_kafka_jars() {
  local dest="$STATE/jars/kafka-$KAFKA_VERSION"
  stamp_ok "$dest/.installed" "$KAFKA_VERSION-$LOG4J_VERSION" && return
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central"
  rm -rf "$dest"
  mvn -q -B -f "$ROOT/scripts/platform/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
    -Dmaven.repo.local="$CACHE/m2" -DoutputDirectory="$dest"
  echo "$KAFKA_VERSION-$LOG4J_VERSION" > "$dest/.installed"
}

install_flink_jars() {
  local lib connector artifact="org.apache.flink:flink-sql-connector-kafka:$FLINK_KAFKA_CONNECTOR_VERSION"
  lib="$(pyflink_home)/lib"
  connector="flink-sql-connector-kafka-$FLINK_KAFKA_CONNECTOR_VERSION.jar"
  if [ ! -f "$lib/$connector" ]; then
    say "fetching the Flink Kafka connector $FLINK_KAFKA_CONNECTOR_VERSION from Maven Central"
    mvn -q -B dependency:copy -Dartifact="$artifact" -Dmaven.repo.local="$CACHE/m2" -DoutputDirectory="$STATE/jars"
    rm -f "$lib"/flink-sql-connector-kafka-*.jar
    cp "$STATE/jars/$connector" "$lib/"
  fi
  # Flink's Prometheus reporter, a plugin (its own class loader). PyFlink's wheel usually ships it;
  # fetched from Maven Central, of the cluster's version, when it does not.
  local reporter="flink-metrics-prometheus-$FLINK_VERSION.jar" plugin
  plugin="$(dirname "$lib")/plugins/metrics-prometheus"
  if [ ! -f "$plugin/$reporter" ]; then
    say "fetching Flink's Prometheus reporter $FLINK_VERSION from Maven Central"
    mvn -q -B dependency:copy -Dartifact="org.apache.flink:flink-metrics-prometheus:$FLINK_VERSION" \
      -Dmaven.repo.local="$CACHE/m2" -DoutputDirectory="$STATE/jars"
    mkdir -p "$plugin"
    rm -f "$plugin"/flink-metrics-prometheus-*.jar
    cp "$STATE/jars/$reporter" "$plugin/"
  fi
  # The job's Kafka (de)serializers: compiled against the cluster's own flink-dist and connector jars.
  local src=("$ROOT"/flink_job/java/src/main/java/yahoollm/flink/*.java)
  local want; want="$(cat "${src[@]}" | sha256sum | cut -c1-16)"
  if ! stamp_ok "$STATE/jars/yahoo-llm-flink.stamp" "$want" || [ ! -f "$lib/yahoo-llm-flink.jar" ]; then
    say "compiling the Flink job's serializers"
    local build="$STATE/jars/yahoo-llm-flink-classes"
    rm -rf "$build"; mkdir -p "$build"
    javac -nowarn --release 11 -cp "$lib/*" -d "$build" "${src[@]}"
    jar cf "$lib/yahoo-llm-flink.jar" -C "$build" .
    echo "$want" > "$STATE/jars/yahoo-llm-flink.stamp"
  fi
}

install_node_tools() {
  local want="dclint@$DCLINT_VERSION"
  stamp_ok "$STATE/tools/.installed" "$want" && return
  say "installing $want (docker compose linter) from npm"
  mkdir -p "$STATE/tools"
  npm install --silent --no-audit --no-fund --prefix "$STATE/tools" --cache "$CACHE/npm" "$want" >/dev/null
  echo "$want" > "$STATE/tools/.installed"
}

# --- the dashboard's browser assets (issue 9) ---------------------------------------------------
# Chart.js, pinned in dashboard/package-lock.json, into dashboard/node_modules (gitignored); the
# dashboard serves it itself (no CDN). Redone when the lock changes.
install_dashboard_assets() {
  local modules="$ROOT/dashboard/node_modules" want
  want="$(sha256sum "$ROOT/dashboard/package-lock.json" | cut -c1-16)"
  stamp_ok "$modules/.installed" "$want" && [ -f "$modules/chart.js/dist/chart.umd.min.js" ] && return
  say "installing the dashboard's Chart.js from npm (dashboard/package-lock.json)"
  npm ci --silent --no-audit --no-fund --prefix "$ROOT/dashboard" --cache "$CACHE/npm" >/dev/null
  echo "$want" > "$modules/.installed"
}

# actionlint (lints .github/workflows in `make test`): a Go module built with the machine's Go; the
# module and build caches live in $CACHE so a fresh clone rebuilds it from disk.
install_go_tools() {
  local want="github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  stamp_ok "$STATE/tools/bin/.installed" "$want" && [ -x "$STATE/tools/bin/actionlint" ] && return
  local go; go="$(command -v go || echo /usr/local/go/bin/go)"
  [ -x "$go" ] || { say "need Go (https://go.dev) to build actionlint"; exit 1; }
  say "building actionlint $ACTIONLINT_VERSION from the Go module proxy"
  mkdir -p "$STATE/tools/bin"
  GOBIN="$STATE/tools/bin" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" "$go" install "$want"
  echo "$want" > "$STATE/tools/bin/.installed"
}

mkdir -p "$STATE" "$CACHE"
install_system_packages
install_venv
install_llama_cpp
install_kafka_jars
install_flink_jars
install_node_tools
install_dashboard_assets
install_go_tools
say "ready ($VENV)"
